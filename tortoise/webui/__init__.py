"""`turtle`: check the device environment, then serve the Streamlit web UI (`tortoise/webui/app.py`).

    turtle                                   # http://localhost:8501
    turtle --host 0.0.0.0 --port 8080        # reachable from other machines
    turtle --server.headless true            # any `--server.*`, `--browser.*`, `--theme.*`, ... option passes through

Importing this package is cheap: Streamlit and the models load only in the app process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tortoise.webui.settings import SETTINGS_ENV
from tortoise.utils.voice_upload import MAX_CLIP_BYTES

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8501
PASSTHROUGH_SECTIONS = ("server", "browser", "theme", "client", "runner", "logger", "global", "magic")
STREAMLIT_MISSING = ("turtle: Streamlit is not installed; install the web UI extra with "
                     "pip install 'tortoise-tts-xpu[webui]' (or pip install streamlit).")


def app_path() -> Path:
    """The app file inside the installed package (works from a checkout and from a wheel)."""
    return Path(__file__).resolve().with_name("app.py")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="turtle", description="Start the Tortoise web UI (Streamlit) in your browser.",
        epilog="Streamlit options such as --server.headless true or --browser.gatherUsageStats false pass through.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--settings", default=None, help="settings file (default ~/.config/tortoise/webui.json)")
    parser.add_argument("--skip-check", action="store_true", help="do not run the device environment check first")
    args, rest = parser.parse_known_args(argv)
    passthrough, unknown = _split_passthrough(rest)
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)} "
                     f"(Streamlit options look like --server.port 8501)")
    if not 0 < args.port < 65536:
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


def build_command(args: argparse.Namespace, passthrough: list[str], python: str | None = None) -> list[str]:
    """The `streamlit run` command line; explicit --server.* options win over --host/--port."""
    cmd = [python or sys.executable, "-m", "streamlit", "run", str(app_path())]
    defaults = [("--server.address", args.host), ("--server.port", str(args.port)),
                ("--server.maxUploadSize", str(MAX_CLIP_BYTES // 2**20)),
                ("--browser.gatherUsageStats", "false"), ("--client.toolbarMode", "minimal")]
    for option, value in defaults:
        if not _given(passthrough, option):
            cmd += [option, value]
    return cmd + passthrough


def _option(cmd: list[str], option: str) -> str | None:
    value = None
    for i, arg in enumerate(cmd):
        if arg == option and i + 1 < len(cmd):
            value = cmd[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def served_url(cmd: list[str]) -> str:
    """The address the command will serve (explicit --server.* options included)."""
    return f"http://{_option(cmd, '--server.address')}:{_option(cmd, '--server.port')}"


def streamlit_available() -> bool:
    return importlib.util.find_spec("streamlit") is not None


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse_args(argv)
    if not streamlit_available():
        print(STREAMLIT_MISSING, file=sys.stderr)
        return 1
    if not args.skip_check:
        from tortoise.webui.device_info import print_environment_check
        print_environment_check()
    env = dict(os.environ)
    if args.settings:
        env[SETTINGS_ENV] = str(Path(args.settings).expanduser().resolve())
    cmd = build_command(args, passthrough)
    print(f"turtle: serving the web UI on {served_url(cmd)}  (Ctrl+C stops it)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
