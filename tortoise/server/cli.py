"""The ``tortoise-server`` command: parse options, load the models once, serve OpenAI's speech API with uvicorn.

Model and device options are the command line's own (:func:`tortoise.flags.add_model_arguments`). Bad options exit 2
with one line; models that fail to load stop the server with exit 1 and one line.
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import ipaddress
import os
import signal
import sys
import urllib.parse
import warnings
from pathlib import Path

from tortoise.distributed import serve as ray_serve  # imports no Ray until --ray is used
from tortoise.flags import (Parser, UsageError, add_model_arguments, check_model_args, choose_vocoder, flag,
                            make_session, model_options)
from tortoise.placement import model_identity
from tortoise.utils.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, install_hint, one_line

API_KEY_ENV = "TORTOISE_API_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build_parser():
    p = Parser(prog="tortoise-server",
                description="Tortoise text to speech as a server speaking OpenAI's speech API "
                            "(POST /v1/audio/speech): models loaded once, requests served in order.",
                epilog="Example:  tortoise-server --voices_dir ~/voices --port 8000   then   curl "
                       "http://127.0.0.1:8000/v1/audio/speech -H 'Content-Type: application/json' -d "
                       "'{\"model\": \"tts-1\", \"input\": \"Hello.\", \"voice\": \"random\"}' -o hello.mp3")
    g = p.add_argument_group("server")
    g.add_argument(*flag("host"), default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    g.add_argument(*flag("port"), type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    g.add_argument(*flag("api_key"), default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 routes (default ${API_KEY_ENV}; none: open)")
    g.add_argument(*flag("queue_size"), type=int, default=8,
                   help="requests that may wait behind the one being generated; more get 429 (default 8)")
    g.add_argument(*flag("timeout"), type=float, default=600.0,
                   help="seconds a request may take from arrival to its last byte, waiting included; "
                        "0: no limit (default 600)")
    g.add_argument("-V", *flag("voices_dir"), default=None,
                   help="directory of voices (one subdirectory per voice); a comma separates several; uploaded "
                        "voices are written to the first (created when missing)")
    g.add_argument(*flag("no_upload"), action="store_true", help="refuse POST /v1/audio/voices")
    g.add_argument(*flag("log_level"), default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info: one line per request)")
    w = p.add_argument_group("Wyoming protocol (Home Assistant)")
    w.add_argument(*flag("wyoming"), default=None, metavar="URI",
                   help="also speak the Wyoming protocol at URI: tcp://HOST:PORT (e.g. tcp://0.0.0.0:10200, Home "
                        "Assistant's default port) or unix://PATH; same engine, queue and voices as the HTTP API")
    w.add_argument(*flag("wyoming_options"), default=None, metavar="JSON",
                   help="speech request fields for every Wyoming request, as POST /v1/audio/speech takes them: "
                        "model (default tts-1), voice (when the client names none; default random), seed, speed, "
                        "generation options; e.g. '{\"model\": \"ultra_fast\", \"voice\": \"tom\"}'")
    w.add_argument(*flag("no_http"), action="store_true", help="serve only the Wyoming protocol (needs --wyoming)")
    a = p.add_argument_group("models and device")
    s = p.add_argument_group("speed")
    add_model_arguments(a, s)
    ray_serve.add_arguments(p.add_argument_group("Ray Serve (the ray extra: pip install -e '.[ray]')"))
    return p


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host, api_key):
    """The warning printed when the server listens beyond this machine without a key (None when there is none)."""
    if api_key or is_loopback(host):
        return None
    return (f"tortoise-server: warning: listening on {host} without an API key: anyone who can reach this port can "
            f"use the server and upload voices; set --api_key or ${API_KEY_ENV}")


def wyoming_warning(uri):
    """The warning printed when the Wyoming protocol (which has no API key) listens beyond this machine."""
    parsed = urllib.parse.urlparse(uri or "")
    if parsed.scheme != "tcp" or is_loopback(parsed.hostname or ""):
        return None
    return (f"tortoise-server: warning: the Wyoming protocol on {uri} has no API key: anyone who can reach this port "
            "can use the server; keep it on a trusted network")


def check_args(args):
    check_model_args(args)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port: use 1..65535")
    if args.queue_size < 0:
        raise UsageError("--queue_size must be 0 or more")
    if args.timeout < 0:
        raise UsageError("--timeout must be 0 (no limit) or more seconds")
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError("--api_key is empty: give a key, or leave the option out for an open server")
    check_wyoming_args(args)


def check_wyoming_args(args):
    """--wyoming's URI and options are checked before any model loads; the wyoming package is needed only then."""
    if args.wyoming is None:
        if args.no_http or args.wyoming_options is not None:
            raise UsageError(f"--{'no_http' if args.no_http else 'wyoming_options'} needs --wyoming "
                             "tcp://HOST:PORT")
        return
    if args.ray:
        raise UsageError("--wyoming is not available with --ray: start a tortoise-server --wyoming beside the Ray "
                         "deployment")
    if importlib.util.find_spec("wyoming") is None:
        raise UsageError(f"--wyoming needs the wyoming package: {install_hint('server')}")
    from tortoise.server import wyoming_server  # the wyoming package: needed only with --wyoming
    try:
        wyoming_server.server_for(args.wyoming)
        args.wyoming_options = wyoming_server.parse_options(args.wyoming_options)
    except ValueError as e:
        raise UsageError(one_line(e)) from None


def voices_dirs(args, say):
    """The voices directories; the first (the upload directory) is created when missing, the others must exist."""
    dirs = [Path(d).expanduser() for d in (args.voices_dir or "").split(",") if d.strip()]
    for i, d in enumerate(dirs):
        if d.exists() and not d.is_dir():
            raise UsageError(f"--voices_dir {d} is a file: give a directory")
        if not d.exists():
            if i > 0:
                raise UsageError(f"--voices_dir {d} does not exist: create it or drop it")
            d.mkdir(parents=True)
            say(f"Created the voices directory {d}")
    return dirs


def load_models(args, vocoder, say):
    """The :class:`~tortoise.session.Session` of the options, its text and audio front ends used once: the number
    cleaner imports inflect and the filter banks librosa and scipy, seconds that belong to start-up, not to the first
    request."""
    from tortoise.utils.sound import TorchMelSpectrogram, univnet_stft
    tts = make_session(args, vocoder, say, stream=False)
    tts.tokenizer.encode("Warming up 1 text cleaner.")
    TorchMelSpectrogram()
    univnet_stft()
    return tts


def _missing_server_packages():
    return [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]


def build_config(args, say):
    """What the HTTP and Wyoming front ends need besides the engine, the models' identity (what a clip's record
    names) included."""
    from tortoise.server.app import ServerConfig
    from tortoise.utils.voices import expected_latent_widths
    dirs = voices_dirs(args, say)
    vocoder = choose_vocoder(args.vocoder, args.models_dir)
    return ServerConfig(voices_dirs=dirs, upload_dir=None if args.no_upload or not dirs else dirs[0],
                        api_key=api_key_of(args), timeout=args.timeout or None,
                        latent_widths=expected_latent_widths(args.models_dir), wyoming_uri=args.wyoming,
                        wyoming_options=args.wyoming_options or {},
                        model_identity=model_identity(model_options(args, vocoder, stream=False)))


def build_engine(args, say, on_fatal=None):
    """The engine (its models load on its thread once started)."""
    from tortoise.server.engine import Engine
    vocoder = choose_vocoder(args.vocoder, args.models_dir)
    return Engine(lambda: load_models(args, vocoder, say), args.queue_size, on_fatal=on_fatal)


def build_app(args, say, on_fatal=None):
    """The speech server's application and its engine (its models load on the engine's thread once started)."""
    from tortoise.server.app import create_app
    config = build_config(args, say)
    engine = build_engine(args, say, on_fatal)
    return create_app(config, engine), engine


def api_key_of(args):
    return args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)


def replica_app(args):
    """A Ray Serve replica's application (``tortoise-server --ray``): built on the replica, which waits for its models
    so that a replica that cannot load them fails to start, and Serve reports its error in one line."""
    app, engine = build_app(args, lambda message: print(message, flush=True))
    engine.start()
    engine.wait_loaded()
    if engine.error is not None:
        raise engine.error
    return app


def serve(args, say):
    check_args(args)
    notices = [None if args.no_http else host_warning(args.host, api_key_of(args)), wyoming_warning(args.wyoming)]
    for warning in filter(None, notices):
        print(warning, file=sys.stderr, flush=True)
    ray_options = ray_serve.options_from_args(args)  # bad flags, or Ray missing: one line, exit 2
    if ray_options is not None:
        voices_dirs(args, say)  # created or checked on the driver, before any replica starts
        return ray_serve.run(functools.partial(replica_app, args), ray_options, say)
    if args.no_http:
        return asyncio.run(serve_wyoming_only(args, say))
    import uvicorn
    failure = []

    def fatal(error):
        failure.append(error)
        print(f"tortoise-server: error: the models could not be loaded: {type(error).__name__}: {one_line(error)}",
              file=sys.stderr, flush=True)
        server.should_exit = True

    app, engine = build_app(args, say, on_fatal=fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))
    engine.start()
    server.run()
    if failure:
        return EXIT_FAILED
    return 0 if server.started else EXIT_FAILED


async def serve_wyoming_only(args, say):
    """``--no_http``: the Wyoming server alone, until SIGINT / SIGTERM, or until the models fail to load (exit 1)."""
    from tortoise.server import wyoming_server  # the wyoming package: needed only with --wyoming
    from tortoise.server.voices import VoiceLoader
    loop = asyncio.get_running_loop()
    stop, failure = asyncio.Event(), []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def fatal(error):
        failure.append(error)
        print(f"tortoise-server: error: the models could not be loaded: {type(error).__name__}: {one_line(error)}",
              file=sys.stderr, flush=True)
        loop.call_soon_threadsafe(stop.set)

    config = build_config(args, say)
    engine = build_engine(args, say, on_fatal=fatal)
    service = wyoming_server.WyomingService(engine, VoiceLoader(config.voices_dirs), config, config.wyoming_options)
    server = await wyoming_server.start(args.wyoming, service)
    say(f"Wyoming server listening on {args.wyoming}")
    engine.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
        engine.stop()
    return EXIT_FAILED if failure else 0


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"tortoise-server: warning: {' '.join(str(message).split())}\n"


def main(argv=None):
    """Console entry point ``tortoise-server``; returns the exit status."""
    missing = _missing_server_packages()
    if missing:
        print(f"tortoise-server: error: the server needs {', '.join(missing)}: {install_hint('server')}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        args = build_parser().parse_args(argv)
        saved, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # "tortoise-server: warning: ..."
        try:
            return serve(args, lambda message: print(message, flush=True))
        finally:
            warnings.formatwarning = saved
    except UsageError as e:
        print(f"tortoise-server: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ray_serve.ServeFailed as e:
        print(f"tortoise-server: error: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
