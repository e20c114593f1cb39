"""`turtle`: check the device environment, then serve the Streamlit web UI (`tortoise/webui/app.py`).

    turtle                                   # http://localhost:8501
    turtle --host 0.0.0.0 --port 8080        # reachable from other machines
    turtle --server.headless true            # any `--server.*`, `--browser.*`, `--theme.*`, ... option passes through
    turtle --models-dir M --voices-dir V --output-dir O   # server-side paths (read-only in a page served beyond
                                                          # localhost)

SIGTERM and SIGINT are passed on to Streamlit, and turtle exits when it has stopped.

Importing this module is cheap: Streamlit and the models load only in the app process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tortoise.webui.settings import LOCK_PATHS_ENV, SERVER_PATH_ENV, SETTINGS_ENV, is_local_address
from tortoise.utils.errors import install_hint
from tortoise.utils.voice_upload import MAX_CLIP_BYTES

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8501
PASSTHROUGH_SECTIONS = ("server", "browser", "theme", "client", "runner", "logger", "global", "magic")
STREAMLIT_MISSING = "turtle: Streamlit is not installed; install the web UI extra: {hint}"
EXIT_FAILED = 1  # exit codes as every console script of the project (tortoise.utils.errors): argparse gives 2
STOP_GRACE_SECONDS = 30  # after a forwarded SIGTERM/SIGINT, how long Streamlit may take before it is killed
PATH_FLAGS = (  # turtle flag -> Settings field; the app reads them from SERVER_PATH_ENV[field]
    ("models_dir", "models_dir", "checkpoint directory (default $TORTOISE_MODELS_DIR or ~/.cache/tortoise/models)"),
    ("voices_dir", "extra_voices_dir", "voices directory: searched first, uploads saved there "
                                       "(default ~/.local/share/tortoise/voices)"),
    ("output_dir", "output_dir", "where each run's clips are written (default results)"),
    ("ar_checkpoint", "ar_checkpoint", "fine-tuned autoregressive checkpoint (default: the released one)"),
    ("diff_checkpoint", "diff_checkpoint", "fine-tuned diffusion checkpoint (default: the released one)"),
)
NO_AUTH_WARNING = ("turtle: warning: the page listens on {address}, beyond this machine, and has no authentication: "
                   "anyone who can reach it can generate speech, upload voices and download every result. Paths are "
                   "read-only in the page. Serve it on localhost (the default) or behind a proxy that "
                   "authenticates.")


def app_path() -> Path:
    """The app file inside the installed package (works from a checkout and from a wheel)."""
    return Path(__file__).resolve().with_name("app.py")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="turtle", description="Start the Tortoise web UI (Streamlit) in your browser.",
        epilog="Streamlit options such as --server.headless true or --browser.gatherUsageStats false pass through; "
               "Streamlit's own settings (STREAMLIT_SERVER_PORT, STREAMLIT_SERVER_ADDRESS, .streamlit/config.toml) "
               "are honoured unless --host/--port are given. Exit status: 0 when stopped, 1 when Streamlit fails, "
               "2 for bad arguments.")
    parser.add_argument("--host", default=None,
                        help=f"address to listen on (default {DEFAULT_HOST}, or Streamlit's server.address setting; "
                             "0.0.0.0 for every interface: the page has no authentication)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to listen on (default {DEFAULT_PORT}, or Streamlit's server.port setting)")
    for flag, field, text in PATH_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", f"--{flag}", dest=flag, default=None,
                            help=f"{text}; also ${SERVER_PATH_ENV[field]}. Shown read-only in the page "
                                 "when it is served beyond localhost")
    parser.add_argument("--lock-paths", action="store_true",
                        help="show the paths read-only even on localhost (e.g. behind a reverse proxy); "
                             f"also ${LOCK_PATHS_ENV}=1")
    parser.add_argument("--settings", default=None, help="settings file (default ~/.config/tortoise/webui.json)")
    parser.add_argument("--skip-check", action="store_true", help="do not run the device environment check first")
    args, rest = parser.parse_known_args(argv)
    passthrough, unknown = _split_passthrough(rest)
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)} "
                     f"(Streamlit options look like --server.port 8501)")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a port number (1-65535)")
    return args, passthrough


def _split_passthrough(rest: list[str]) -> tuple[list[str], list[str]]:
    """Keep `--section.option value` / `--section.option=value` pairs; return (passthrough, unknown)."""
    passthrough, unknown, i = [], [], 0
    while i < len(rest):
        arg = rest[i]
        section = arg[2:].split(".", 1)[0] if arg.startswith("--") and "." in arg else ""
        if section in PASSTHROUGH_SECTIONS:
            if "=" in arg or i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                passthrough.append(arg)
                i += 1
            else:
                passthrough += [arg, rest[i + 1]]
                i += 2
        else:
            unknown.append(arg)
            i += 1
    return passthrough, unknown


def _given(passthrough: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in passthrough)


# ---- Streamlit's own settings -------------------------------------------------------------------------------------

def streamlit_env_var(option: str) -> str:
    """The environment variable Streamlit reads for `option`: "server.maxUploadSize" ->
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", option.replace(".", "_"))
    return f"STREAMLIT_{snake.upper()}"


def _config_files() -> list[Path]:
    """Streamlit's config files, later ones winning: ~/.streamlit/config.toml, then ./.streamlit/config.toml."""
    return [Path.home() / ".streamlit" / "config.toml", Path.cwd() / ".streamlit" / "config.toml"]


def _read_toml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    try:
        import tomllib
        return tomllib.loads(text)
    except ImportError:  # Python 3.10: Streamlit depends on the toml package
        import toml
        return toml.loads(text)
    except ValueError:
        return {}  # Streamlit itself reports a broken config file


def streamlit_settings(options, env=None, files=None) -> dict[str, str]:
    """Values the user gave Streamlit itself for `options` ("section.option"): its STREAMLIT_* environment
    variables, else its config files. turtle's own defaults must not override them."""
    env = os.environ if env is None else env
    found = {}
    for path in (_config_files() if files is None else files):
        data = _read_toml(Path(path))
        for option in options:
            section, name = option.split(".", 1)
            if isinstance(data.get(section), dict) and name in data[section]:
                found[option] = str(data[section][name])
    for option in options:
        if streamlit_env_var(option) in env:
            found[option] = env[streamlit_env_var(option)]
    return found


def build_command(args: argparse.Namespace, passthrough: list[str], python: str | None = None,
                  user_settings: dict[str, str] | None = None) -> list[str]:
    """The `streamlit run` command line. Precedence per option: an explicit --server.* option, then --host/--port,
    then Streamlit's own settings (environment, config files: passed over, Streamlit reads them), then turtle's
    defaults."""
    cmd = [python or sys.executable, "-m", "streamlit", "run", str(app_path())]
    defaults = [("server.address", args.host, DEFAULT_HOST), ("server.port", args.port, DEFAULT_PORT),
                ("server.maxUploadSize", None, MAX_CLIP_BYTES // 2**20),
                ("browser.gatherUsageStats", None, "false"), ("client.toolbarMode", None, "minimal")]
    if user_settings is None:
        user_settings = streamlit_settings([option for option, _, _ in defaults])
    for option, flag_value, default in defaults:
        if _given(passthrough, f"--{option}"):
            continue
        if flag_value is not None:
            cmd += [f"--{option}", str(flag_value)]
        elif option not in user_settings:
            cmd += [f"--{option}", str(default)]
    return cmd + passthrough


def _option(cmd: list[str], option: str) -> str | None:
    value = None
    for i, arg in enumerate(cmd):
        if arg == option and i + 1 < len(cmd):
            value = cmd[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def served_address(cmd: list[str], user_settings: dict[str, str] | None = None) -> tuple[str, str]:
    """(address, port) the command will serve: its options, else Streamlit's own settings, else Streamlit's
    defaults (every interface, 8501)."""
    user_settings = {} if user_settings is None else user_settings
    address = _option(cmd, "--server.address") or user_settings.get("server.address") or ""
    port = _option(cmd, "--server.port") or user_settings.get("server.port") or str(DEFAULT_PORT)
    return address, port


def served_url(cmd: list[str], user_settings: dict[str, str] | None = None) -> str:
    """The address the command will serve (explicit --server.* options and Streamlit's settings included)."""
    address, port = served_address(cmd, user_settings)
    return f"http://{address or '0.0.0.0'}:{port}"


def streamlit_available() -> bool:
    return importlib.util.find_spec("streamlit") is not None


def app_environment(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The app's environment: the settings file and the server-side paths given as flags (absolute paths)."""
    env = dict(os.environ if base is None else base)
    if args.settings:
        env[SETTINGS_ENV] = str(Path(args.settings).expanduser().resolve())
    for flag, field, _ in PATH_FLAGS:
        value = getattr(args, flag)
        if value:
            env[SERVER_PATH_ENV[field]] = str(Path(value).expanduser().resolve())
    if args.lock_paths:
        env[LOCK_PATHS_ENV] = "1"
    return env


# ---- running Streamlit ---------------------------------------------------------------------------------------------

def _delivered_by_terminal(signum: int, proc: subprocess.Popen) -> bool:
    """Ctrl+C in a terminal signals the whole foreground process group, Streamlit included: not sent twice."""
    if signum != signal.SIGINT or os.name != "posix":
        return False
    try:
        return os.getpgid(proc.pid) == os.getpgrp() == os.tcgetpgrp(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def run_streamlit(cmd: list[str], env: dict[str, str], grace: float = STOP_GRACE_SECONDS) -> int:
    """Run Streamlit as a child; SIGTERM and SIGINT (and SIGHUP) are passed on to it and turtle waits for it to stop
    (a second signal, or `grace` seconds, and it is killed). Returns Streamlit's exit status (128 + N if signal N
    ended it)."""
    proc = subprocess.Popen(cmd, env=env)
    received: list[tuple[int, float]] = []  # (signal, when)

    def forward(signum, frame):
        received.append((signum, time.monotonic()))
        if proc.poll() is not None:
            return
        try:
            if len(received) > 1:
                print("turtle: stopping Streamlit now", file=sys.stderr, flush=True)
                proc.kill()
            elif not _delivered_by_terminal(signum, proc):
                proc.send_signal(signum)
        except ProcessLookupError:
            pass

    handled = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and time.monotonic() - received[0][1] > grace and proc.poll() is None:
                print(f"turtle: Streamlit did not stop within {grace:.0f} s; killing it", file=sys.stderr, flush=True)
                proc.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse_args(argv)
    if not streamlit_available():
        print(STREAMLIT_MISSING.format(hint=install_hint("webui")), file=sys.stderr)
        return EXIT_FAILED
    if not args.skip_check:
        from tortoise.webui.device_info import print_environment_check
        print_environment_check()
    user_settings = streamlit_settings(["server.address", "server.port", "server.maxUploadSize",
                                        "browser.gatherUsageStats", "client.toolbarMode"])
    cmd = build_command(args, passthrough, user_settings=user_settings)
    address, _ = served_address(cmd, user_settings)
    if not is_local_address(address):
        print(NO_AUTH_WARNING.format(address=address or "every interface"), file=sys.stderr, flush=True)
    print(f"turtle: serving the web UI on {served_url(cmd, user_settings)}  (Ctrl+C stops it)", flush=True)
    return run_streamlit(cmd, app_environment(args))
