"""`turtle` as users run it: a real Streamlit child that stops with it (SIGTERM, SIGINT), Streamlit's own settings
honoured, the no-authentication warning, and the server-side paths handed to the app."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import tortoise.webui.launch as webui


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def turtle_cmd() -> list[str]:
    beside = Path(sys.executable).parent / "turtle"
    return [str(beside)] if beside.exists() else [sys.executable, "-c",
                                                  "import sys; from tortoise.webui import main; sys.exit(main())"]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped


def wait_health(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"turtle exited with {proc.returncode} before serving:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"nothing answered on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def serve_and_stop(tmp_path: Path, args: list[str], env: dict, port: int, sig: int) -> tuple[int, str]:
    """Start turtle, wait until Streamlit answers on `port`, send `sig` to turtle alone, and return (turtle's exit
    status, its log) after checking Streamlit stopped with it."""
    log = tmp_path / f"turtle-{sig}.log"
    full_env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1", **env)
    with open(log, "wb") as out:
        proc = subprocess.Popen(turtle_cmd() + ["--skip-check", "--server.headless", "true",
                                                "--server.fileWatcherType", "none", *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
                                cwd=tmp_path, start_new_session=True)
    try:
        wait_health(port, proc, log)
        kids = children(proc.pid)
        assert kids, "turtle runs Streamlit as its child"
        os.kill(proc.pid, sig)  # turtle only, as a service manager or `kill` does
        code = proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(k) for k in kids), f"Streamlit outlived turtle:\n{log.read_text()[-2000:]}"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)
        return code, log.read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.mark.slow
def test_sigterm_stops_streamlit_and_streamlit_env_settings_are_honoured(tmp_path):
    """Was: turtle died on SIGTERM and Streamlit kept serving; STREAMLIT_SERVER_PORT was overridden by 8501."""
    port = free_port()
    code, log = serve_and_stop(tmp_path, [], {"STREAMLIT_SERVER_PORT": str(port),
                                              "STREAMLIT_SERVER_ADDRESS": "127.0.0.1"}, port, signal.SIGTERM)
    assert code == 0, log  # Streamlit stopped cleanly (not killed)
    assert f"serving the web UI on http://127.0.0.1:{port}" in log and "no authentication" not in log


@pytest.mark.slow
def test_sigint_stops_streamlit(tmp_path):
    port = free_port()
    code, log = serve_and_stop(tmp_path, ["--host", "127.0.0.1", "--port", str(port)],
                               {"STREAMLIT_SERVER_PORT": "1"}, port, signal.SIGINT)  # the flag wins over the env
    assert code == 0, log


# ---- Streamlit's own settings --------------------------------------------------------------------------------------

def test_streamlit_env_and_config_files_win_over_turtle_defaults(tmp_path):
    args, rest = webui.parse_args([])
    env = {"STREAMLIT_SERVER_PORT": "9200", "STREAMLIT_SERVER_ADDRESS": "127.0.0.1",
           "STREAMLIT_SERVER_MAX_UPLOAD_SIZE": "50"}
    user = webui.streamlit_settings(["server.address", "server.port", "server.maxUploadSize"], env=env, files=[])
    cmd = webui.build_command(args, rest, python="PY", user_settings=user)
    assert "--server.port" not in cmd and "--server.address" not in cmd and "--server.maxUploadSize" not in cmd
    assert webui.served_url(cmd, user) == "http://127.0.0.1:9200"
    args, rest = webui.parse_args(["--port", "9300"])  # turtle's explicit flag still wins
    cmd = webui.build_command(args, rest, python="PY", user_settings=user)
    assert cmd[cmd.index("--server.port") + 1] == "9300"
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 9400\naddress = "0.0.0.0"\n')
    user = webui.streamlit_settings(["server.address", "server.port"], env={}, files=[config])
    assert user == {"server.port": "9400", "server.address": "0.0.0.0"}
    args, rest = webui.parse_args([])
    cmd = webui.build_command(args, rest, python="PY", user_settings=user)
    assert "--server.port" not in cmd and webui.served_address(cmd, user) == ("0.0.0.0", "9400")
    assert webui.streamlit_env_var("browser.gatherUsageStats") == "STREAMLIT_BROWSER_GATHER_USAGE_STATS"


# ---- the warning and the paths handed to the app ------------------------------------------------------------------

@pytest.fixture
def fake_streamlit(monkeypatch, tmp_path):
    """Stand-in for the Streamlit child: records the command and environment turtle would run it with."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith(("STREAMLIT_", "TURTLE_"))]:
        monkeypatch.delenv(var)
    calls = []
    monkeypatch.setattr(webui, "run_streamlit", lambda cmd, env: calls.append((cmd, env)) or 0)
    return calls


@pytest.mark.parametrize("argv, env, warned", [
    (["--host", "0.0.0.0"], {}, True),
    ([], {"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"}, True),
    (["--host", "192.168.1.20"], {}, True),
    ([], {}, False),
    (["--host", "127.0.0.1"], {}, False),
])
def test_listening_beyond_localhost_warns_about_authentication(fake_streamlit, monkeypatch, capsys, argv, env,
                                                               warned):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert webui.main(argv + ["--skip-check"]) == 0
    err = capsys.readouterr().err
    assert ("has no authentication" in err) == warned
    if warned:
        assert len(err.strip().splitlines()) == 1 and "read-only" in err


def test_path_flags_reach_the_app(fake_streamlit, tmp_path):
    assert webui.main(["--skip-check", "--models-dir", "m", "--voices_dir", "v", "--output-dir", "~/o",
                       "--ar-checkpoint", "ar.pth", "--lock-paths"]) == 0
    (cmd, env), = fake_streamlit
    assert env["TURTLE_MODELS_DIR"] == str(tmp_path / "m") and env["TURTLE_VOICES_DIR"] == str(tmp_path / "v")
    assert env["TURTLE_OUTPUT_DIR"] == str(tmp_path / "o") and env["TURTLE_AR_CHECKPOINT"] == str(tmp_path / "ar.pth")
    assert env["TURTLE_LOCK_PATHS"] == "1" and "TURTLE_DIFF_CHECKPOINT" not in env


def test_streamlit_failure_is_exit_1(monkeypatch):
    """turtle exits with Streamlit's status: 1 when it fails (e.g. the port is taken)."""
    code = webui.run_streamlit([sys.executable, "-c", "import sys; sys.exit(1)"], dict(os.environ))
    assert code == 1
    assert webui.run_streamlit([sys.executable, "-c", "pass"], dict(os.environ)) == 0
