"""The web UI in a real browser: `turtle` serves it with tiny models, headless Chromium (Debian's package) opens it,
presses Generate and must get an audio player that plays a wav. A screenshot is kept under the test's tmp_path.

Chromium is driven through the DevTools protocol over a websocket (a minimal client written here on the standard
library), so neither a test tool's own browser download nor a driver package is needed.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1600", "--remote-debugging-address=127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_turtle() -> list[str]:
    """The installed console script (beside this Python first, then on PATH)."""
    beside = Path(sys.executable).parent / "turtle"
    path = str(beside) if beside.exists() else shutil.which("turtle")
    if not path:
        pytest.fail("the `turtle` console script is not installed: pip install -e .")
    return [path]


def find_chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (the CI script installs it)")
    return path


def start(cmd, log: Path, env=None) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # its own process group: stopped as a whole in finally


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before {url} answered:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


class WebSocket:
    """A minimal RFC 6455 client (text frames, client masking, fragmentation): enough for the DevTools protocol,
    with no dependency beyond the standard library."""

    def __init__(self, url: str, timeout: float = 30):
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port or 80)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("the DevTools websocket closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the DevTools websocket closed")
            buf += chunk
        return bytes(buf)

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        message = bytearray()
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            n = struct.unpack(">H", self._exact(2))[0] if n == 126 else \
                struct.unpack(">Q", self._exact(8))[0] if n == 127 else n
            payload = self._exact(n)  # the server does not mask
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the DevTools websocket was closed by the browser")
            if opcode in (0x9, 0xA):  # ping / pong: ignored (Chromium does not require answers here)
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class DevTools:
    """The few DevTools protocol calls the test needs, on one page's websocket."""

    def __init__(self, ws: WebSocket):
        self.ws, self.next_id = ws, 0

    def call(self, method: str, timeout: float = 30, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{method}: no answer within {timeout:.0f} s")
            msg = json.loads(self.ws.recv(remaining))
            if msg.get("id") == my_id:  # events and other replies are skipped
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str, timeout: float = 30):
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


FIND_GENERATE = "Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Generate')"
AUDIO_CHECK = """(async () => {
  const a = document.querySelector('audio');
  const bytes = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
  const duration = await new Promise(resolve => {
    if (a.readyState >= 1) return resolve(a.duration);
    a.addEventListener('loadedmetadata', () => resolve(a.duration));
    a.addEventListener('error', () => resolve(-1));
    a.load();
    setTimeout(() => resolve(-2), 20000);
  });
  return {size: bytes.length, magic: String.fromCharCode(...bytes.slice(0, 4)), duration: duration};
})()"""


PATH_LABELS = ("Models directory", "Extra voices directory", "Output directory")
PATH_INPUTS = f"""Array.from(document.querySelectorAll('input'))
  .filter(i => {list(PATH_LABELS)!r}.includes(i.getAttribute('aria-label')))
  .map(i => [i.getAttribute('aria-label'), i.disabled, i.value])"""


def drive(devtools_port: int, app_url: str, shot: Path) -> dict:
    """Open the app, press Generate, wait for the player, check its audio, take a screenshot."""
    with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=10) as r:
        pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
    ws = WebSocket(pages[0]["webSocketDebuggerUrl"])
    try:
        page = DevTools(ws)
        page.call("Page.enable")
        page.call("Page.navigate", url=app_url)
        page.wait_for(f"!!({FIND_GENERATE})", 90, "the Generate button")
        page.js(f"({FIND_GENERATE}).click(); true")
        page.wait_for("document.querySelectorAll('audio').length > 0", 240, "an audio player")
        audio = page.js(AUDIO_CHECK, timeout=60)
        paths = page.js(PATH_INPUTS)
        failures = page.js("Array.from(document.querySelectorAll("
                           "'[data-testid=stException], [data-testid=stAlertContentError]')).map(e => e.innerText)")
        png = page.call("Page.captureScreenshot", timeout=60, format="png", captureBeyondViewport=False)
        shot.write_bytes(base64.b64decode(png["data"]))
        return {"audio": audio, "failures": failures, "paths": paths}
    finally:
        ws.close()


def close_browser(devtools_port: int, proc: subprocess.Popen | None) -> None:
    """Ask Chromium to quit (it then removes its temporary files); `stop` remains the fallback."""
    if proc is None or proc.poll() is not None:
        return
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/version", timeout=5) as r:
            ws = WebSocket(json.loads(r.read())["webSocketDebuggerUrl"], timeout=5)
        try:
            DevTools(ws).call("Browser.close", timeout=5)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the browser closes the socket as it quits
        finally:
            ws.close()
        proc.wait(timeout=15)
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        pass


@pytest.mark.slow
def test_turtle_in_headless_chromium(tmp_path, tiny_models_dir):
    """Served as a public page is (`--lock-paths`; tests listen on 127.0.0.1 only): the paths come from turtle's
    flags, not from the settings file, and the browser shows them read-only."""
    chromium = find_chromium()
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    home.mkdir()
    scratch.mkdir()
    settings = tmp_path / "webui.json"
    settings.write_text(json.dumps({"settings": {  # paths a visitor (or an old session) chose: must not count
        "models_dir": str(tmp_path / "not_models"), "output_dir": str(tmp_path / "not_out"),
        "extra_voices_dir": str(tmp_path / "not_voices"), "device": "cpu", "preset": "ultra_fast", "ar_samples": 2,
        "steps": 2, "max_mel_tokens": 20, "text": "Hello from the browser.", "voices": ["random"], "seed": 1}}))
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"), TMPDIR=str(scratch), PYTHONUNBUFFERED="1")
    env.pop("TURTLE_SETTINGS", None)
    port, devtools_port = free_port(), free_port()
    server_log, browser_log = tmp_path / "turtle.log", tmp_path / "chromium.log"
    server = browser = None
    try:
        server = start(find_turtle() + ["--host", "127.0.0.1", "--port", str(port), "--settings", str(settings),
                                        "--lock-paths", "--models-dir", str(tiny_models_dir),
                                        "--output-dir", str(tmp_path / "out"), "--voices-dir", str(tmp_path / "voices"),
                                        "--server.headless", "true", "--server.fileWatcherType", "none"],
                       server_log, env)
        assert wait_http(f"http://127.0.0.1:{port}/_stcore/health", 120, server, server_log) == b"ok"
        # Chromium keeps the system TMPDIR: its singleton socket path must stay under 108 bytes (removed on exit)
        browser_env = dict(env, TMPDIR=os.environ.get("TMPDIR", "/tmp"))
        browser = start([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
                         f"--remote-debugging-port={devtools_port}", "about:blank"], browser_log, browser_env)
        wait_http(f"http://127.0.0.1:{devtools_port}/json/version", 60, browser, browser_log)
        shot = tmp_path / "turtle.png"
        result = drive(devtools_port, f"http://127.0.0.1:{port}/", shot)
    finally:
        close_browser(devtools_port, browser)
        stop(browser)
        stop(server)
    log = server_log.read_text()
    assert "turtle: device cpu" in log  # the device layer's check ran before the server started
    assert result["failures"] == [], result["failures"]
    assert sorted(result["paths"]) == sorted([["Models directory", True, str(tiny_models_dir)],
                                              ["Extra voices directory", True, str(tmp_path / "voices")],
                                              ["Output directory", True, str(tmp_path / "out")]]), result["paths"]
    assert not (tmp_path / "not_out").exists()
    audio = result["audio"]
    assert audio["magic"] == "RIFF" and audio["size"] > 1000
    assert audio["duration"] > 0.1, audio  # Chromium decoded the wav: the player can play it
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    runs = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "random_00_00.wav").is_file()
