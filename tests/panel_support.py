"""Starting real processes for the panel tests: the panel under uvicorn, a learner, an actor.

Every process is started in its own session and killed (whole group) when the test ends,
pass or fail.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROBOT_SQL = str(Path(sys.executable).with_name("robot-sql"))


def start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    handle = open(log, "wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, **(env or {})})
    handle.close()
    return process


def stop(process: subprocess.Popen, grace_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `grace_s`; returns the exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return process.wait(5)


def kill_pid(pid: int) -> None:
    """Kill a process some test made the panel start (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_healthy(base_url: str, process: subprocess.Popen, log: Path, timeout_s: float = 20.0) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"panel exited with {process.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout_s, "the panel's /health")


def run_token(run_dir: Path) -> str:
    """The run's control token (made now if the run has none yet): what control requests must carry."""
    from robot_sql.rundir import RunDir

    return RunDir.create(run_dir).token("control")[0]


class BreakableProxy:
    """A TCP relay on a free loopback port in front of `upstream_port`, for browser tests: `drop()`
    cuts every open connection (the page's event stream with them), and a request whose bytes start
    with `slow_prefix` waits `delay_s` before it is passed on (a slow render on a busy machine)."""

    def __init__(self, upstream_port: int, slow_prefix: bytes = b"", delay_s: float = 0.0):
        self.upstream_port, self.slow_prefix, self.delay_s = upstream_port, slow_prefix, delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                browser, _ = self.listener.accept()
                panel = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return  # closed
            with self.lock:
                self.sockets += [browser, panel]
            threading.Thread(target=self._pump, args=(browser, panel, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(panel, browser, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_browser: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_browser and self.slow_prefix and data.startswith(self.slow_prefix):
                    time.sleep(self.delay_s)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()
        self.drop()
