"""The actor/learner service as separate processes on loopback: training, kill -9 of the learner,
an actor that starts first, and a flood of malformed frames on every learner socket.

Small budgets: MultiGoal with the reference hyperparameters, one torch thread per process.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import yaml
import zmq
from hypothesis import given, settings, strategies as st

from robot_sql.ports import free_port, free_port_block
from robot_sql.protocol import (PROTOCOL_VERSION, ControlClient, ControlError, ProtocolError, decode, encode,
                                session_tag)
from robot_sql.replay_store import ReplayStore
from robot_sql.rundir import MetricsStore
from robot_sql.sql import SoftQLearning, load_checkpoint
from robot_sql.train import evaluate
from tests.conftest import failed
from tests.panel_support import ROBOT_SQL, run_token, start, stop, wait_for

RATE_HZ = 50.0
LOOP_STALL_S = 1.5  # the learner is away for seconds in these tests: a loop waiting on it would stall that long


class Service:
    """Starts learner and actor processes for one test and kills whatever is left at the end."""

    def __init__(self, root: Path):
        self.root, self.run_dir = root, root / "run"
        self.port = free_port_block(3)
        self.processes = []
        self.actor_controls: dict[str, str] = {}
        self.token = run_token(self.run_dir)  # the learner keeps it, the actors and these clients read it

    def learner(self, run_dir: Path | None = None, **settings):
        values = {"port": self.port, "torch_threads": 1, "min_replay": 100, "publish_every": 10, **settings}
        config = self.root / "learner.yaml"
        config.write_text(yaml.safe_dump(values))
        process = start([ROBOT_SQL, "learner", "--run-dir", str(run_dir or self.run_dir), "--config", str(config)],
                        self.root / f"learner-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def actor(self, name: str, **settings):
        control = f"tcp://127.0.0.1:{free_port()}"
        values = {"learner": f"127.0.0.1:{self.port}", "env": "MultiGoal-v0", "name": name, "control_bind": control,
                  "control_token_file": str(self.run_dir / "control.token"),
                  "control_rate_hz": RATE_HZ, "link_timeout_s": 1.0, "resend_after_s": 1.0, **settings}
        config = self.root / f"{name}.yaml"
        config.write_text(yaml.safe_dump(values))
        process = start([ROBOT_SQL, "actor", "--config", str(config)], self.root / f"{name}.log")
        self.processes.append(process)
        self.actor_controls[name] = control
        return process

    def learner_status(self) -> dict | None:
        try:
            return ControlClient(f"tcp://127.0.0.1:{self.port + 2}", timeout_s=1.0, token=self.token).call("status")
        except ControlError:
            return None

    def actor_status(self, name: str, **args) -> dict | None:
        try:
            return ControlClient(self.actor_controls[name], timeout_s=1.0, token=self.token).call("status", **args)
        except ControlError:
            return None

    def stop_all(self) -> None:
        for process in self.processes:  # SIGTERM to all at once: each takes a second or two to wind down
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            stop(process)

    def logs(self) -> str:
        return "\n".join(f"==== {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.root.glob("*.log")))


@pytest.fixture
def service(tmp_path, request):
    service = Service(tmp_path)
    yield service
    service.stop_all()
    if failed(request) or os.environ.get("ROBOT_SQL_SHOW_SERVICE_LOGS"):
        print(service.logs())  # shown under the failure as "Captured stdout teardown"


def acked_seqs(status: dict) -> set[int]:
    return set(range(1, status["last_seq"] + 1)) - set(status["unacked_seqs"])


def test_two_actor_processes_and_a_learner_train_multigoal(service):
    learner = service.learner(max_updates=3000)
    for index in range(2):
        service.actor(f"actor-{index}", seed=index)
    assert learner.wait(500) == 0, service.logs()  # the learner stops itself after max_updates (~100 s here, unloaded)
    statuses = [service.actor_status(f"actor-{index}") for index in range(2)]
    assert all(status["acked_transitions"] > 500 for status in statuses), statuses

    checkpoint = service.run_dir / "checkpoints" / "learner.pt"
    agent = SoftQLearning.load(checkpoint)  # the agent inside the learner's checkpoint, as from train's agent.pt
    assert agent.updates == 3000
    # two processes feed one replay, so runs differ: 3000 updates have scored 0.42 to 0.72, untrained 0.0
    trained = evaluate(agent, "MultiGoal-v0", episodes=100, seed=123)["success_rate"]
    untrained = evaluate(SoftQLearning(agent.config), "MultiGoal-v0", episodes=100, seed=123)["success_rate"]
    print(f"MultiGoal success rate: trained {trained:.2f}, untrained {untrained:.2f}")
    assert trained >= 0.3 and trained >= untrained + 0.25, (trained, untrained)
    # `robot-sql eval` takes the learner's checkpoint as it takes train's agent.pt
    out = service.run_dir.parent / "eval"
    evaluated = subprocess.run([ROBOT_SQL, "eval", str(checkpoint), "--env", "multigoal", "--episodes", "20",
                                "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((out / "eval.json").read_text())["episodes"] == 20


def test_kill_9_of_the_learner_loses_nothing_acknowledged_and_actors_ride_through(service):
    actors = ["actor-0", "actor-1"]
    learner = service.learner(checkpoint_every_s=1.0)
    for index, name in enumerate(actors):
        service.actor(name, seed=index)
    wait_for(lambda: (service.learner_status() or {}).get("updates", 0) >= 150, 90, "training to start")
    before = {name: service.actor_status(name, unacked_seqs=True) for name in actors}
    version_before = max(status["weight_version"] for status in before.values())

    os.killpg(learner.pid, signal.SIGKILL)
    learner.wait(10)
    wait_for(lambda: not any(service.actor_status(name)["connected"] for name in actors), 5, "actors to notice")
    gap_start = {name: service.actor_status(name)["steps"] for name in actors}
    time.sleep(2.0)
    gap_end = {name: service.actor_status(name) for name in actors}
    for name in actors:  # still stepping at the control rate, on the last weights, without the learner
        assert gap_end[name]["steps"] - gap_start[name] >= 0.7 * 2.0 * RATE_HZ, gap_end[name]
        assert gap_end[name]["connected"] is False and gap_end[name]["weight_version"] >= before[name]["weight_version"]
        assert gap_end[name]["unacked_transitions"] > 0

    service.learner(checkpoint_every_s=1.0)  # same run directory
    restarted = wait_for(service.learner_status, 60, "the restarted learner")
    assert restarted["transitions_total"] >= max(len(acked_seqs(s)) for s in before.values())
    wait_for(lambda: all((s := service.actor_status(name))["connected"] and s["weight_version"] > version_before
                         and s["unacked_transitions"] < 300 for name in actors), 30, "actors to reconnect and catch up")
    updates_then = service.learner_status()["updates"]
    wait_for(lambda: service.learner_status()["updates"] >= updates_then + 50, 30, "training to go on")
    after = {name: service.actor_status(name, unacked_seqs=True) for name in actors}
    assert service.learner_status()["weight_version"] > version_before
    service.stop_all()

    store = ReplayStore(service.run_dir / "replay", obs_dim=2, act_dim=2, capacity=100_000)
    seen = {session_tag(session): seqs for session, seqs in store.seen.items()}
    for name in actors:
        stored = set(seen[after[name]["session_tag"]])
        assert acked_seqs(before[name]) <= stored and acked_seqs(after[name]) <= stored
        assert len(acked_seqs(after[name])) > len(acked_seqs(before[name]))
        # the longest control period over the whole run, gap and restart included (period 20 ms): a loop that
        # waited on the network would show the learner's absence (seconds); a loaded machine, a few hundred ms
        print(f"{name}: longest control period {1000 * after[name]['loop_period']['max_since_start_s']:.1f} ms")
        assert after[name]["loop_period"]["max_since_start_s"] < LOOP_STALL_S, after[name]["loop_period"]


def test_an_actor_started_before_the_learner_runs_then_connects(service):
    service.actor("early")
    alone = wait_for(lambda: (s := service.actor_status("early")) and s["steps"] >= 50 and s, 30, "the actor to run alone")
    assert alone["connected"] is False and alone["weight_version"] == 0
    assert alone["unacked_transitions"] >= alone["steps"] - 5  # all kept (the newest few wait to fill a batch)
    service.learner()
    joined = wait_for(lambda: (s := service.actor_status("early", unacked_seqs=True))["weight_version"] > 0
                      and s["connected"] and s["acked_transitions"] >= alone["steps"] and s, 60, "the actor to connect")
    assert 1 in acked_seqs(joined)  # transitions from before the learner existed were kept and delivered
    assert joined["loop_period"]["max_since_start_s"] < LOOP_STALL_S

    service.actor("wrong-env", env="SawyerReach-v0")  # transitions of another size: refused, kept, never stored
    refused = wait_for(lambda: (s := service.actor_status("wrong-env")) and s["refused_by_learner"].get("shape") and s,
                       60, "the learner to refuse the wrong-sized transitions")
    assert refused["acked_transitions"] == 0 and refused["unacked_transitions"] > 0
    assert service.learner_status()["rejected"]["data"]["shape"] >= 1


def test_learner_control_channel_pauses_resumes_checkpoints_and_stops(service):
    learner = service.learner(checkpoint_every_s=600, checkpoint_history=2)
    service.actor("actor-0")
    control = ControlClient(f"tcp://127.0.0.1:{service.port + 2}", timeout_s=10.0, token=service.token)
    wait_for(lambda: (service.learner_status() or {}).get("updates", 0) >= 20, 90, "training to start")
    assert control.call("pause") == {"paused": True}
    time.sleep(0.2)  # an update in progress finishes
    paused_at = control.call("status")
    time.sleep(1.0)
    status = control.call("status")
    assert status["state"] == "paused" and status["updates"] == paused_at["updates"]
    assert status["transitions_total"] > paused_at["transitions_total"]  # still taking data while paused
    assert control.call("resume") == {"paused": False}
    wait_for(lambda: control.call("status")["updates"] > paused_at["updates"], 30, "training to resume")
    checkpoint = Path(control.call("checkpoint")["path"])
    assert checkpoint == service.run_dir / "checkpoints" / "learner.pt" and checkpoint.stat().st_size > 0
    for _ in range(2):  # two more checkpoints, each at more updates: the history keeps the last two
        updates = control.call("checkpoint")["updates"]
        wait_for(lambda: control.call("status")["updates"] > updates, 30, "more updates")
    with pytest.raises(ControlError) as error:
        control.call("format_disk")
    assert error.value.kind == "unknown_command"
    assert control.call("stop") == {"stopping": True}
    assert learner.wait(30) == 0
    events = [kind for _, _, _, kind, _ in MetricsStore(service.run_dir / "metrics.sqlite").events()]
    assert {"start", "pause", "resume", "checkpoint", "stop", "stopped"} <= set(events)
    # the history: bounded (4 checkpoints were written, the last at the stop), each kept file loads at its update count
    history = service.run_dir / "checkpoints" / "history"
    index = json.loads((history / "index.json").read_text())
    assert sorted(path.name for path in history.iterdir()) == sorted([entry["name"] for entry in index] + ["index.json"])
    assert len(index) == 2 and index[0]["updates"] < index[1]["updates"] and index[0]["time"] <= index[1]["time"]
    for entry in index:
        state = load_checkpoint(history / entry["name"])
        assert SoftQLearning.from_state_dict(state["agent"]).updates == entry["updates"]
        assert entry["name"].startswith(f"learner-u{entry['updates']:09d}-") and entry["env"] == "MultiGoal-v0"
    assert (history / index[1]["name"]).read_bytes() == (service.run_dir / "checkpoints" / "learner.pt").read_bytes()


def test_sigterm_stops_the_learner_cleanly_and_actors_follow_a_new_run(service):
    learner = service.learner(publish_every=2)
    service.actor("actor-0")
    first = wait_for(lambda: (s := service.actor_status("actor-0")) and s["weight_version"] >= 20 and s, 60,
                     "weights from the first run")
    os.killpg(learner.pid, signal.SIGTERM)
    assert learner.wait(30) == 0
    assert (service.run_dir / "checkpoints" / "learner.pt").is_file()
    service.learner(run_dir=service.root / "another-run")  # versions start again from 1 in a new run directory
    wait_for(lambda: (s := service.actor_status("actor-0"))["connected"] and s["weight_version"] < first["weight_version"],
             60, "the actor to take the new run's weights")


# ---- malformed frames ------------------------------------------------------------------------------
plain = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats() | st.text(max_size=8)
                     | st.binary(max_size=16), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
array_like = st.fixed_dictionaries({"dtype": st.sampled_from(["<f4", "<f8", "|O", ">f4", "<c8", "x"]),
                                    "shape": st.lists(st.integers(-1, 2 ** 31), max_size=5),
                                    "data": st.binary(max_size=64)})
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["transitions", "ping", "stats", "request", "weights", "ack", "nope"]) | st.text(max_size=5),
     "v": st.sampled_from([PROTOCOL_VERSION, 0, 2, -1]) | plain, "sender": st.text(max_size=8) | plain},
    optional={"session": st.text(max_size=8) | plain, "seq": st.integers(-5, 2 ** 40) | plain,
              "obs_dim": st.integers(-1, 5) | plain, "act_dim": st.integers(-1, 5) | plain, "rows": array_like | plain,
              "command": st.sampled_from(["status", "stop", "pause"]) | plain, "args": plain,
              "values": st.dictionaries(st.text(max_size=6), st.floats() | plain, max_size=4)})


def hypothesis_frames(count: int) -> list[bytes]:
    """Frames hypothesis builds to look like messages; the rare valid one is left out (it could say "stop")."""
    frames = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None)
    @given(st.one_of(plain.map(msgpack.packb), message_like.map(msgpack.packb)))
    def collect(frame):
        try:
            decode(frame, {"transitions", "ping", "stats", "request"})
        except ProtocolError:
            frames.append(frame)

    collect()
    rng = np.random.default_rng(1)
    return (frames + [b"\xc1" + rng.bytes(8) for _ in range(count)])[:count]


def malformed_frames(count: int, max_frame_bytes: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    good = encode("transitions", "fuzz", session="fuzz", seq=1, obs_dim=2, act_dim=2, rows=np.zeros((8, 8), np.float32))
    nan_rows = np.zeros((8, 8), np.float32)
    nan_rows[3, 4] = np.nan  # a reward
    share = count // 6
    frames = hypothesis_frames(count - 5 * share)
    frames += [rng.bytes(int(n)) for n in rng.integers(0, 300, share)]
    frames += [good[: int(n)] for n in rng.integers(0, len(good), share)]  # truncated msgpack
    huge = [b"\xc6\xff\xff\xff\xff", b"\xdd\x7f\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\xdb\xff\xff\xff\xf0",
            msgpack.packb({"type": "weights", "v": PROTOCOL_VERSION, "sender": "f", "run": "r", "version": 1, "hidden_sizes": [1],
                           "weights": {"w": {"dtype": "<f4", "shape": [2 ** 30, 2 ** 30], "data": b""}}})]
    frames += [huge[i % len(huge)] + rng.bytes(int(i % 7)) for i in range(share - 3)] + [b"\x00" * (max_frame_bytes + 1)] * 3
    frames += [encode("transitions", "fuzz", session="fuzz", seq=int(i), obs_dim=2, act_dim=2,
                      rows=nan_rows if i % 2 else np.full((8, 8), np.inf, np.float32)) for i in range(share)]
    other_versions = (v for v in rng.integers(0, 1000, 2 * share) if v != PROTOCOL_VERSION)  # 1: before rows
    frames += [msgpack.packb({**msgpack.unpackb(good), "v": int(next(other_versions))}) for _ in range(share)]
    rng.shuffle(frames)
    assert len(frames) == count
    return frames


def test_ten_thousand_malformed_frames_on_every_learner_socket_are_counted_and_training_goes_on(service):
    max_frame_bytes = 64 * 1024
    learner = service.learner(max_frame_bytes=max_frame_bytes)
    service.actor("actor-0")
    wait_for(lambda: (service.learner_status() or {}).get("updates", 0) >= 20, 90, "training to start")
    frames = malformed_frames(10_000, max_frame_bytes)
    context = zmq.Context()
    data, control, weights = context.socket(zmq.DEALER), context.socket(zmq.DEALER), context.socket(zmq.XSUB)
    for socket, offset in ((data, 0), (weights, 1), (control, 2)):
        socket.linger = 0
        socket.connect(f"tcp://127.0.0.1:{service.port + offset}")
    time.sleep(0.3)
    start = service.learner_status()
    replies = {"data": 0, "control": 0}
    try:
        for first in range(0, len(frames), 500):
            chunk = frames[first: first + 500]
            for frame in chunk:
                data.send(frame)
                control.send_multipart([b"", frame] if frame[:1] != b"\x00" else [frame, b"extra", b"frames"])
                weights.send(b"\x02" + frame)  # anything but (un)subscribe is wrong on the weights socket
            deadline = time.monotonic() + 30
            while sum(replies.values()) < 2 * (first + len(chunk)) and time.monotonic() < deadline:
                for name, socket in (("data", data), ("control", control)):
                    while socket.poll(10):
                        socket.recv_multipart()
                        replies[name] += 1
    finally:
        context.destroy(linger=0)
    end = wait_for(lambda: (s := service.learner_status())["received"]["weights"] - start["received"]["weights"]
                   >= len(frames) and s, 20, "the learner to count every frame")
    rejected = {socket: sum(end["rejected"][socket].values()) - sum(start["rejected"][socket].values())
                for socket in ("data", "control", "weights")}
    assert rejected == {"data": len(frames), "control": len(frames), "weights": len(frames)}, end["rejected"]
    assert replies == {"data": len(frames), "control": len(frames)}  # every bad request answered with an error
    kinds = end["rejected"]["data"]
    assert {"malformed", "oversized", "nonfinite", "version", "schema"} <= set(kinds), kinds
    assert learner.poll() is None
    updates = end["updates"]
    wait_for(lambda: service.learner_status()["updates"] >= updates + 30, 60, "training to go on")
    assert service.actor_status("actor-0")["connected"]


def test_curve_keys_let_the_right_actor_in_and_keep_others_out(service):
    keys = service.root / "keys"
    for name in ("learner", "actor", "intruder"):
        subprocess.run([ROBOT_SQL, "keygen", "--out", str(keys / name), "--name", name], check=True, capture_output=True)
    service.learner(curve_secret_key=str(keys / "learner" / "learner.key_secret"), curve_clients_dir=str(keys / "actor"))
    server_key = str(keys / "learner" / "learner.key")
    service.actor("keyed", curve_secret_key=str(keys / "actor" / "actor.key_secret"), curve_server_key=server_key)
    service.actor("intruder", curve_secret_key=str(keys / "intruder" / "intruder.key_secret"), curve_server_key=server_key)
    service.actor("plain")
    actor_keys = {"keyed": keys / "actor" / "actor.key", "intruder": keys / "intruder" / "intruder.key"}

    def status(name: str) -> dict:
        """Actors with keys secure their own control channel too; any key pair may talk to it."""
        keys_of_panel = (keys / "intruder" / "intruder.key_secret", actor_keys[name]) if name in actor_keys else (None, None)
        try:
            return ControlClient(service.actor_controls[name], 1.0, "panel", *keys_of_panel, token=service.token).call("status")
        except ControlError:  # not up yet
            return {}

    started = time.monotonic()
    wait_for(lambda: (s := status("keyed")).get("connected") and s["weight_version"] > 0 and s["acked_transitions"] > 0,
             60, "the keyed actor to connect through CURVE")
    with pytest.raises(ControlError):  # a plain client gets no answer from a CURVE control channel
        ControlClient(service.actor_controls["keyed"], 0.5, token=service.token).call("status")
    wait_for(lambda: all(status(name).get("steps", 0) > 0 for name in ("intruder", "plain")), 30, "the other actors to run")
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))  # time enough for a handshake that should fail
    for name in ("intruder", "plain"):
        assert status(name)["connected"] is False and status(name)["weight_version"] == 0
        assert status(name)["acked_transitions"] == 0
    learner_status = ControlClient(f"tcp://127.0.0.1:{service.port + 2}", 2.0, secret_key_file=keys / "actor" / "actor.key_secret",
                                   server_key_file=server_key, token=service.token).call("status")
    assert [actor["sender"] for actor in learner_status["actors"].values()] == ["keyed"]
