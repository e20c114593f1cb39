"""Start ``tortoise-server`` in a child process on a free loopback port and wait until it is ready.

For scripts, notebooks, tests and the load check (``benchmarks/bench_server.py``)::

    with ServerProcess(["--models_dir", "models", "--voices_dir", "voices"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A ``python -m tortoise.server`` child on 127.0.0.1 (stopped on exit). Its output goes to ``log`` (a file; a
    temporary one when not given), which :meth:`output` reads back."""

    def __init__(self, args, env=None, log=None, ready_timeout=180.0, port=None):
        self.args = list(args)
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout
        self._log_path = Path(log) if log else None
        self._own_log = log is None
        self.proc = None

    def start(self):
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tortoise-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tortoise.server", "--host", "127.0.0.1",
                                          "--port", str(self.port), *self.args], stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env)
        self.wait_ready()
        return self

    def wait_ready(self):
        end = time.monotonic() + self.ready_timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tortoise-server exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"tortoise-server not ready after {self.ready_timeout:.0f} s: {self.output()[-2000:]}")

    def output(self):
        return self._log_path.read_text(errors="replace") if self._log_path and self._log_path.exists() else ""

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, timeout=20.0):
        """Stop the server (SIGTERM, as Ctrl-C would), killing it if it does not end within ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
