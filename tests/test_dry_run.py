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
import sys
import time
from pathlib import Path

import httpx
import pytest

from robot_sql.ports import free_port, free_port_block
from robot_sql.protocol import ControlClient, ControlError
from robot_sql.rundir import read_token
from tests.panel_support import ROBOT_SQL

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
        self.actor = ControlClient(f"tcp://127.0.0.1:{self.port + 5}", timeout_s=2.0)  # actor-0's control channel

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
        return self._status(self.learner)

    def actor_status(self, **args) -> dict | None:
        return self._status(self.actor, **args)

    def _status(self, client: ControlClient, **args) -> dict | None:
        token_file = self.run_dir / "control.token"  # made by the dry run as it starts
        if not token_file.exists():
            return None
        client.token = read_token(token_file)
        try:
            return client.call("status", **args)
        except ControlError:
            return None

    def child_pids(self) -> dict[str, int]:
        """name -> pid of each child, the newest start of each (a restart prints its line again)."""
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
        self.actor.close()


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
    assert "learner exited (exit status 0); stopped on purpose" in run.text()
    assert "restarting" not in run.text()  # the dry run leaves a learner stopped on purpose to the panel

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


def test_dry_run_restarts_a_learner_killed_with_sigkill_and_the_actor_delivers_what_it_held(dry_runs):
    run = dry_runs()
    before = run.wait_for("a few weight versions", lambda: (s := run.learner_status()) and s["weight_version"] > 3 and s, 120)
    pids = run.child_pids()
    os.kill(pids["learner"], signal.SIGKILL)
    # the dead learner acknowledges nothing more: whatever the actor has sent since is held
    held = run.wait_for("the actor holding transitions nobody acknowledged",
                        lambda: (s := run.actor_status(unacked_seqs=True)) and s["unacked_seqs"] and s, 60)
    assert run.learner_status() is None  # taken in the gap: no learner yet (the restart waits 1 s, then starts up)

    run.wait_for("the restart said", lambda: re.search(r"^dry-run: learner died \(signal SIGKILL\) after \d+ s; "
                                                       r"restarting it in 1 s \(attempt 1\)$", run.text(), re.M), 60)
    back = run.wait_for("the restarted learner on newer weight versions",
                        lambda: (s := run.learner_status()) and s["weight_version"] > before["weight_version"] and s, 180)
    assert back["transitions_total"] >= before["transitions_total"]  # nothing acknowledged was lost
    assert run.child_pids()["learner"] not in (pids["learner"], None) and not alive(pids["learner"])

    delivered = run.wait_for(
        "the held transitions acknowledged by the new learner",
        lambda: (s := run.actor_status(unacked_seqs=True)) and s["connected"]
        and not set(held["unacked_seqs"]) & set(s["unacked_seqs"]) and s, 120)
    assert delivered["acked_transitions"] >= held["acked_transitions"] + held["unacked_transitions"]
    assert delivered["dropped_transitions"] == 0
    run.wait_for("the actor on the new learner's weights",
                 lambda: (s := run.actor_status()) and s["weight_version"] > before["weight_version"], 120)
    run.wait_for("training going on", lambda: (s := run.learner_status()) and s["updates"] > back["updates"]
                 and s["transitions_total"] > back["transitions_total"], 120)
    # the same actor process kept them through the gap; actor and panel ran on, untouched
    assert {name: pid for name, pid in run.child_pids().items() if name != "learner"} == \
        {name: pid for name, pid in pids.items() if name != "learner"}
    assert run.text().count("restarting it") == 1

    children = run.child_pids()
    assert run.stop(signal.SIGINT) == 0, run.text()
    assert "all processes stopped" in run.text()
    assert [name for name, pid in children.items() if alive(pid)] == []
    assert processes_mentioning(str(run.run_dir)) == []


def test_dry_run_restarts_a_killed_actor_and_panel(dry_runs):
    run = dry_runs()
    token = run.wait_for("the panel address and token", lambda: re.search(r"panel http://\S+\?token=(\S+)", run.text()), 60)[1]
    panel = f"http://127.0.0.1:{run.panel_port}"
    run.wait_for("the panel's /health", lambda: _get(f"{panel}/health") == 200, 60)
    run.wait_for("the actor's status", run.actor_status, 60)
    pids = run.child_pids()
    for name in ("actor-0", "panel"):
        os.kill(pids[name], signal.SIGKILL)
    for name in ("actor-0", "panel"):
        run.wait_for(f"the restart of {name} said",
                     lambda: re.search(rf"^dry-run: {name} died \(signal SIGKILL\) after \d+ s; restarting it", run.text(), re.M), 60)
    run.wait_for("a new actor process", lambda: run.child_pids()["actor-0"] != pids["actor-0"], 60)
    again = run.wait_for("the new actor on its control channel", run.actor_status, 120)  # the killed one is gone
    assert again["name"] == "actor-0"
    run.wait_for("the restarted panel's /health", lambda: _get(f"{panel}/health") == 200, 120)
    status = httpx.get(f"{panel}/api/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert status.status_code == 200, status.text  # the same token: it lives in the run directory
    run.wait_for("the new actor's transitions acknowledged by the learner",
                 lambda: (s := run.actor_status()) and s["acked_transitions"] > 0, 120)
    new = run.child_pids()
    assert new["learner"] == pids["learner"] and new["actor-0"] != pids["actor-0"] and new["panel"] != pids["panel"]

    assert run.stop(signal.SIGINT) == 0, run.text()
    assert [name for name, pid in {**pids, **{f"{k}-new": v for k, v in new.items()}}.items() if alive(pid)] == []
    assert processes_mentioning(str(run.run_dir)) == []


def test_a_child_that_keeps_dying_is_restarted_with_backoff_then_given_up(tmp_path, monkeypatch, capsys):
    from robot_sql import dry_run

    monkeypatch.setattr(dry_run, "ROBOT_SQL", "/bin/sh")  # children are `sh ARGS` here, not `robot-sql ARGS`
    monkeypatch.setattr(dry_run, "RESTART_BACKOFF_S", (0.1, 0.2, 0.4))
    monkeypatch.setattr(dry_run, "MAX_FAST_DEATHS", 4)
    supervisor = dry_run.Supervisor(tmp_path / "logs")
    supervisor.start(dry_run.Child("crasher", ["-c", "echo no config here; exit 3"]))
    supervisor.start(dry_run.Child("quitter", ["-c", "exit 0"]))
    assert supervisor.supervise(None, lambda: "status") == 1  # given up: the dry run ends with a failure
    out = capsys.readouterr().out
    for attempt, delay in ((1, "0.1"), (2, "0.2"), (3, "0.4")):
        assert re.search(rf"^dry-run: crasher died \(exit status 3\) after \d+ s; restarting it in {delay} s "
                         rf"\(attempt {attempt}\); the end of its log:$", out, re.M), out
    assert re.search(r"^dry-run: crasher died \(exit status 3\) after \d+ s; 3 restarts in a row have died within "
                     r"60 s of their start: GIVEN UP", out, re.M), out
    assert "dry-run:   | no config here" in out and "  | ====" not in out  # the end of the newest start's log
    assert out.count("crasher        pid") == 4  # the first start and three restarts, no more
    assert "quitter exited (exit status 0); stopped on purpose: not restarted" in out
    assert out.count("quitter        pid") == 1
    assert supervisor.given_up() == ["crasher"] and supervisor.stop_reason == "every child has exited"


def test_a_dead_learner_is_not_restarted_beside_a_learner_the_panel_started(tmp_path, monkeypatch, capsys):
    from robot_sql import dry_run

    monkeypatch.setattr(dry_run, "ROBOT_SQL", "/bin/sh")
    monkeypatch.setattr(dry_run, "RESTART_BACKOFF_S", (0.1,))
    monkeypatch.setattr(dry_run, "STATUS_EVERY_S", 0.2)
    run_root = tmp_path / "run"
    # what the panel's Start leaves: a learner of the run in a session of its own (here a stand-in)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "learner", "--run-dir", str(run_root)],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while dry_run.learners_of(run_root) != [other.pid] and time.monotonic() < deadline:
            time.sleep(0.1)
        supervisor = dry_run.Supervisor(tmp_path / "logs")
        learner = dry_run.Child("learner", ["-c", "exit 1"], run_lock=run_root)
        supervisor.start(learner)

        def status() -> str:
            if learner.stood_aside_for or learner.deaths >= 2:  # the latter: restarted beside it (wrong)
                supervisor.stop_reason = "test done"
            return "status"

        assert supervisor.supervise(None, status) == 0
    finally:
        other.kill()
        other.wait()
    out = capsys.readouterr().out
    assert re.search(r"^dry-run: learner died \(exit status 1\) after \d+ s; restarting it in 0.1 s \(attempt 1\)", out, re.M)
    assert f"learner: not restarted: pid {other.pid} (started outside the dry run, e.g. by the panel's Start)" in out
    assert out.count("learner        pid") == 1 and learner.stood_aside_for == [other.pid]


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_dry_run_refuses_ports_in_use_and_an_unbuilt_ros_workspace(tmp_path):
    port, panel_port = free_port_block(6), str(free_port())  # not 8765: another panel may hold it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))  # the learner's weights port
        result = subprocess.run([ROBOT_SQL, "dry-run", "--run-dir", str(tmp_path / "run"), "--port", str(port),
                                 "--panel-port", panel_port], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"port {port + 1} on 127.0.0.1 is in use" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written

    result = subprocess.run([ROBOT_SQL, "dry-run", "--ros", "--run-dir", str(tmp_path / "run"), "--port", str(port),
                             "--panel-port", panel_port],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "ROBOT_SQL_ROS_WS": str(tmp_path / "no_ros_ws")})
    assert result.returncode == 2 and "make ros_ws" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
