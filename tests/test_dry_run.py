"""`robot-sql dry-run` as a user runs it: a subprocess that starts learner, simulated arm and panel.

The learner's budget is made small through the environment (the children inherit it): a
100k-transition replay, 200 transitions before the first update, one torch thread.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from robot_sql.protocol import ControlClient, ControlError
from tests.panel_support import ROBOT_SQL, free_port, free_port_block

SMALL_LEARNER = {"ROBOT_SQL_LEARNER_REPLAY_CAPACITY": "100000", "ROBOT_SQL_LEARNER_MIN_REPLAY": "200",
                 "ROBOT_SQL_LEARNER_TORCH_THREADS": "1", "ROBOT_SQL_LEARNER_PUBLISH_EVERY": "5"}


class DryRun:
    """One `robot-sql dry-run` process; its output goes to a file the test reads as it grows."""

    def __init__(self, run_dir: Path, output: Path, *args: str):
        self.run_dir, self.output = run_dir, output
        self.port, self.panel_port = free_port_block(6), free_port()  # learner PORT..PORT+2, actor 0 on PORT+5
        with open(output, "wb") as handle:
            self.process = subprocess.Popen(
                [ROBOT_SQL, "dry-run", "--run-dir", str(run_dir), "--port", str(self.port),
                 "--panel-port", str(self.panel_port), *args],
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **SMALL_LEARNER, "PYTHONUNBUFFERED": "1"})
        self.learner = ControlClient(f"tcp://127.0.0.1:{self.port + 2}", timeout_s=2.0)

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, what: str, condition, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{what} not within {timeout} s (dry run exit {self.process.poll()}):\n{self.text()}\n"
                             f"{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"==== {path.name}\n{path.read_text()[-2000:]}" for path in sorted((self.run_dir / "logs").glob("*.log")))

    def learner_status(self) -> dict | None:
        try:
            return self.learner.call("status")
        except ControlError:
            return None

    def child_pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in re.findall(r"^dry-run: (\S+)\s+pid (\d+)", self.text(), re.M)}

    def stop(self, signum=signal.SIGINT, timeout: float = 60.0) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """After a failure: the dry run and anything still running with the run directory on its command line."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in processes_mentioning(str(self.run_dir)):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.learner.close()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (only its parent's bookkeeping is left)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command_line and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def dry_runs(tmp_path):
    started: list[DryRun] = []

    def start(*args: str) -> DryRun:
        run = DryRun(tmp_path / "run", tmp_path / f"dry-run-{len(started)}.out", *args)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


def test_dry_run_trains_serves_the_panel_and_stops_without_orphans(dry_runs):
    run = dry_runs()
    token = run.wait_for("the panel address and token", lambda: re.search(r"panel http://\S+\?token=(\S+)", run.text()), 60)[1]
    panel = f"http://127.0.0.1:{run.panel_port}"
    run.wait_for("the panel's /health", lambda: _get(f"{panel}/health") == 200, 60)
    assert _get(f"{panel}/api/status") == 401
    status = httpx.get(f"{panel}/api/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert status.status_code == 200, status.text

    first = run.wait_for("SQL updates on transitions from the simulated arm",
                         lambda: (s := run.learner_status()) and s["updates"] > 0 and s, 90)
    assert any(actor["sender"] == "actor-0" and actor["transitions"] > 0 for actor in first["actors"].values()), first
    # training goes on: new weights out, new transitions in (not necessarily in the same status:
    # the learner can publish a version before the actor's next batch of transitions arrives)
    run.wait_for("a newer weight version and more transitions",
                 lambda: (s := run.learner_status()) and s["weight_version"] > first["weight_version"]
                 and s["transitions_total"] > first["transitions_total"], 60)

    # the panel's Stop ends our learner; its Start launches another one outside the dry run's
    # children: Ctrl-C must stop that one too
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{panel}/api/training/stop", headers=headers, timeout=10).status_code == 200
    run.wait_for("the learner's exit", lambda: "learner exited (exit status 0)" in run.text(), 60)
    started = httpx.post(f"{panel}/api/training/start", headers=headers, timeout=10)
    assert started.status_code == 200 and started.json()["started"], started.text
    run.wait_for("the learner started by the panel", run.learner_status, 60)

    children = run.child_pids()
    assert set(children) == {"learner", "actor-0", "panel"}, run.text()
    assert run.stop(signal.SIGINT) == 0, run.text()
    assert "all processes stopped" in run.text()
    assert [name for name, pid in children.items() if alive(pid)] == []
    assert processes_mentioning(str(run.run_dir)) == []
    assert "stopped at" in (run.run_dir / "logs" / "learner.log").read_text()  # the learner exited by itself, checkpointed
    assert f"stopping the learner that the panel started (pid {started.json()['pid']})" in run.text()


def test_dry_run_resumes_on_the_same_run_directory(dry_runs):
    first = dry_runs()
    before = first.wait_for("a few weight versions", lambda: (s := first.learner_status()) and s["weight_version"] > 3 and s, 90)
    assert first.stop(signal.SIGTERM) == 0, first.text()

    second = dry_runs()
    assert "resuming" in second.wait_for("the second start", lambda: "panel http" in second.text() and second.text(), 60)
    resumed = second.wait_for("the resumed learner", second.learner_status, 60)
    assert resumed["weight_version"] > before["weight_version"]
    assert resumed["replay_size"] >= before["replay_size"]
    assert resumed["transitions_total"] >= before["transitions_total"]
    assert second.stop(signal.SIGINT) == 0, second.text()


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_dry_run_refuses_ports_in_use_and_an_unbuilt_ros_workspace(tmp_path):
    port = free_port_block(6)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))  # the learner's weights port
        result = subprocess.run([ROBOT_SQL, "dry-run", "--run-dir", str(tmp_path / "run"), "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"port {port + 1} on 127.0.0.1 is in use" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written

    result = subprocess.run([ROBOT_SQL, "dry-run", "--ros", "--run-dir", str(tmp_path / "run"), "--port", str(port)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "ROBOT_SQL_ROS_WS": str(tmp_path / "no_ros_ws")})
    assert result.returncode == 2 and "make ros_ws" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
