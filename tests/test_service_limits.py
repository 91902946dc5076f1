"""The learner's limits (docs/service.md, "Limits"): values bounded in magnitude, updates that
overflow skipped, stats bounded and allow-listed, sessions never shown, control only with the
run's token, an ingest rate per sender and a disk budget.
Real Learner objects in this process, real ZeroMQ sockets on loopback, real run directories."""
from __future__ import annotations

import json
import sqlite3
import time
import uuid

import msgpack
import numpy as np
import pytest
import torch
import zmq
import zmq.auth

from robot_sql.actor import ActorLink
from robot_sql.learner import MAX_NONFINITE_UPDATES, Learner
from robot_sql.protocol import (PROTOCOL_VERSION, ControlClient, ControlError, Message, decode, encode, secure_client,
                                session_tag)
from robot_sql.rundir import MetricsStore
from robot_sql.service_settings import ActorSettings
from robot_sql.sql import SoftQLearning, SQLConfig
from tests.panel_support import wait_for
from tests.service_support import running_learner

HUGE = 3e38  # finite in float32


class Peer:
    """A DEALER on the learner's data socket, as an actor's."""

    def __init__(self, learner: Learner, secret_key_file=None, server_key_file=None):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        secure_client(self.socket, secret_key_file, server_key_file)
        self.socket.connect(f"tcp://127.0.0.1:{learner.settings.port}")

    def send(self, frame: bytes) -> None:
        self.socket.send(frame)

    def receive(self, count: int, timeout_s: float = 10.0) -> list[Message]:
        replies, deadline = [], time.monotonic() + timeout_s
        while len(replies) < count and self.socket.poll(max(1, int(1000 * (deadline - time.monotonic())))):
            replies.append(decode(self.socket.recv(), {"ack", "error"}))
        return replies

    def close(self) -> None:
        self.context.destroy(linger=0)


def status_of(learner: Learner) -> dict:
    with control(learner) as client:
        return client.call("status")


def control(learner: Learner) -> ControlClient:
    return ControlClient(f"tcp://127.0.0.1:{learner.settings.port + 2}", timeout_s=5.0,
                         token=learner.rundir.token("control")[0])


def rows(count: int, value: float | None = None, seed: int = 0) -> np.ndarray:
    if value is not None:
        return np.full((count, 8), value, np.float32)
    batch = np.random.default_rng(seed).uniform(-1, 1, (count, 8)).astype(np.float32)
    batch[:, 7] = 0.0  # not terminal
    return batch


def frame(seq: int, batch: np.ndarray, sender: str = "arm", session: str = "s1") -> bytes:
    return encode("transitions", sender, session=session, seq=seq, obs_dim=2, act_dim=2, rows=batch)


def kinds(replies: list[Message]) -> list[str]:
    return [reply.body["kind"] for reply in replies if reply.type == "error"]


def acked(replies: list[Message]) -> set[int]:
    return {seq for reply in replies if reply.type == "ack" for seq in reply.body["seqs"]}


def receive_outcomes(peer: Peer, count: int) -> list[Message]:
    """Replies until `count` frames are answered (an ack may answer several)."""
    replies: list[Message] = []
    deadline = time.monotonic() + 10
    answered = lambda: sum(len(r.body["seqs"]) for r in replies if r.type == "ack") + len(kinds(replies))  # noqa: E731
    while answered() < count and time.monotonic() < deadline:
        replies += peer.receive(1, timeout_s=max(0.01, deadline - time.monotonic()))
    return replies


# ---- item 1: finite but extreme values ---------------------------------------------------------------
def test_huge_finite_values_are_refused_unacknowledged_and_good_batches_still_acknowledged(tmp_path):
    with running_learner(tmp_path / "run") as learner:
        peer = Peer(learner)
        try:
            for seq in range(1, 21):
                peer.send(frame(seq, rows(64, HUGE)))
            peer.send(frame(21, rows(64)))
            replies = receive_outcomes(peer, 21)
        finally:
            peer.close()
        assert kinds(replies) == ["out_of_range"] * 20 and acked(replies) == {21}
        status = status_of(learner)
    assert status["state"] == "running" and status["transitions_total"] == 64
    assert status["rejected"]["data"] == {"out_of_range": 20}


def parameters(agent: SoftQLearning) -> list[torch.Tensor]:
    """Every network parameter and every tensor of the optimisers' state (moments, step counts)."""
    tensors = [*agent.q.parameters(), *agent.q_target.parameters(), *agent.sampler.parameters()]
    for optimizer in (agent.q_optimizer, agent.sampler_optimizer):
        tensors += [value for state in optimizer.state.values() for value in state.values()]
    return [tensor.detach().clone() for tensor in tensors]


def same(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def test_an_update_that_overflows_changes_nothing_and_is_not_counted():
    agent = SoftQLearning(SQLConfig(obs_dim=2, act_dim=2, hidden_sizes=(16, 16), batch_size=8), device="cpu")
    rng = np.random.default_rng(0)

    def batch(value: float | None = None) -> dict[str, np.ndarray]:
        columns = {"observations": rng.normal(size=(8, 2)), "actions": rng.uniform(-1, 1, (8, 2)),
                   "rewards": rng.normal(size=8), "next_observations": rng.normal(size=(8, 2)), "terminals": np.zeros(8)}
        if value is not None:  # finite inputs whose products overflow float32
            columns.update(observations=np.full((8, 2), value), next_observations=np.full((8, 2), value))
        return {key: column.astype(np.float32) for key, column in columns.items()}

    # the first step (Adam.step, which creates the optimisers' state), then a later one (adam_step's functional Adam)
    for updates in (0, 1):
        before = parameters(agent)
        metrics = agent.update(batch(HUGE))
        assert not all(np.isfinite(list(metrics.values()))) and agent.updates == updates, metrics
        after = parameters(agent)
        if updates == 0:  # Adam's state exists now, at step 0; the networks did not move
            assert same(before, after[:len(before)])
            optimizers = (agent.q_optimizer, agent.sampler_optimizer)
            assert all(float(state["step"]) == 0 for optimizer in optimizers for state in optimizer.state.values())
        else:
            assert same(before, after)  # parameters, moments and step counts
        metrics = agent.update(batch())
        assert all(np.isfinite(list(metrics.values()))) and agent.updates == updates + 1
        assert not same(after, parameters(agent))


def test_the_metrics_store_leaves_out_non_finite_values(tmp_path):
    store = MetricsStore(tmp_path / "metrics.sqlite")
    store.log("learner", 1, {"q_loss": float("nan"), "q_mean": float("inf"), "updates": 1})  # NaN was a NOT NULL crash
    assert store.names() == ["updates"]
    store.close()


def test_overflowing_updates_are_skipped_then_pause_training_and_a_restart_leaves_the_rows_out(tmp_path):
    run_dir = tmp_path / "run"
    with running_learner(run_dir, max_abs_value=None, min_replay=128) as learner:  # no bound: the rows get in
        untrained = SoftQLearning(learner.agent.config, device=learner.agent.device).policy_weights()
        peer = Peer(learner)
        try:
            peer.send(frame(1, rows(64, HUGE)))
            peer.send(frame(2, rows(64, HUGE)))
            assert acked(receive_outcomes(peer, 2)) == {1, 2}
            paused = wait_for(lambda: (s := status_of(learner))["state"] == "paused" and s, 120, "training to pause")
            peer.send(frame(3, rows(64)))  # still taking data
            assert acked(receive_outcomes(peer, 1)) == {3}
        finally:
            peer.close()
        assert paused["updates"] == 0 and paused["skipped_updates"] == MAX_NONFINITE_UPDATES
        weights = learner.agent.policy_weights()
        assert all(np.array_equal(weights[name], untrained[name]) for name in untrained)  # never stepped
        time.sleep(0.5)  # a metrics row or two while paused
    with sqlite3.connect(run_dir / "metrics.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM metrics WHERE name = 'q_loss'").fetchone() == (0,)
        assert db.execute("SELECT MAX(value) FROM metrics WHERE name = 'skipped_updates'").fetchone() == (MAX_NONFINITE_UPDATES,)
        pauses = db.execute("SELECT message FROM events WHERE kind = 'pause'").fetchall()
    assert len(pauses) == 1 and "non-finite" in pauses[0][0]

    with running_learner(run_dir) as learner:  # the default bound: the stored 3e38 rows are left out, not trained on
        status = status_of(learner)
        assert status["replay_skipped"] == 128 and status["transitions_total"] == 64 and status["replay_size"] == 64


# ---- item 2: stats ----------------------------------------------------------------------------------
def test_stats_are_bounded_allow_listed_and_cannot_write_the_learners_metrics(tmp_path):
    run_dir = tmp_path / "run"
    with running_learner(run_dir) as learner:
        peer, client = Peer(learner), control(learner)
        try:
            huge = encode("stats", "arm", session="s1", values={f"junk_{i}": 1.0 for i in range(100_000)})
            started = time.monotonic()
            peer.send(huge)
            client.call("status", timeout_s=10.0)  # the I/O thread still answers (it stalled for 120 s on such a frame)
            assert kinds(peer.receive(1, timeout_s=10.0)) == ["oversized"] and time.monotonic() - started < 10
            # refused at the map's header, before its entries are read: it declares a million values and holds one
            fields = ("type", "stats", "v", PROTOCOL_VERSION, "sender", "arm", "session", "s1", "values")
            peer.send(b"\x85" + b"".join(map(msgpack.packb, fields)) + b"\xdf" + (1_000_000).to_bytes(4, "big")
                      + msgpack.packb("episode_return") + msgpack.packb(1.0))
            forged = [encode("stats", "learner", session="s1", values={"weight_version": 99_999_999.0}),
                      encode("stats", learner.sender, session="s1", values={"actor_weight_version": 99_999_999.0}),
                      encode("stats", "arm", session="s1", values={"weight_version": 99_999_999.0}),
                      encode("stats", "arm", session="s1", values={f"junk_{i}": 1.0 for i in range(20)})]
            for stats in forged:
                peer.send(stats)
            assert kinds(peer.receive(5)) == ["oversized", "forged", "forged", "unknown_metric", "unknown_metric"]
            peer.send(encode("stats", "arm", session="s1", values={"episode_return": 1.5, "actor_weight_version": 7}))
            wait_for(lambda: client.call("status")["received"]["data"] == 7, 10, "the last stats frame")
            status = client.call("status")
            time.sleep(0.5)  # the learner logs its own metrics, weight_version among them
        finally:
            peer.close()
            client.close()
    assert status["rejected"]["data"] == {"oversized": 2, "forged": 2, "unknown_metric": 2}
    with sqlite3.connect(run_dir / "metrics.sqlite") as db:
        from_peers = set(db.execute("SELECT source, name, value FROM metrics WHERE source != 'learner'"))
        assert db.execute("SELECT COUNT(*) FROM metrics WHERE value >= 99999999").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM metrics WHERE name = 'weight_version'").fetchone()[0] > 0
    assert from_peers == {("arm", "episode_return", 1.5), ("arm", "actor_weight_version", 7.0)}


# ---- item 3: a session's numbers belong to whoever holds its id -------------------------------------
def test_status_and_events_name_a_session_only_by_a_hash_of_it(tmp_path):
    session = uuid.uuid4().hex
    with running_learner(tmp_path / "run") as learner:
        peer = Peer(learner)
        try:
            peer.send(frame(1, rows(50), session=session))
            assert acked(receive_outcomes(peer, 1)) == {1}
        finally:
            peer.close()
        status = status_of(learner)
    assert list(status["actors"]) == [session_tag(session)] and status["actors"][session_tag(session)]["sender"] == "arm"
    assert session not in json.dumps(status)  # what a peer would need to claim this session's (session, seq)
    texts = [text for *_, text in MetricsStore(tmp_path / "run" / "metrics.sqlite").events()]
    assert any(session_tag(session) in text for text in texts) and not any(session in text for text in texts)


def test_with_curve_a_session_belongs_to_the_key_that_first_used_it(tmp_path):
    keys = tmp_path / "keys"
    for folder in ("learner", "clients"):
        (keys / folder).mkdir(parents=True)
    zmq.auth.create_certificates(keys / "learner", "learner")
    for name in ("arm", "other"):  # both allowed on the learner's sockets
        zmq.auth.create_certificates(keys / "clients", name)
    server_key = keys / "learner" / "learner.key"
    with running_learner(tmp_path / "run", curve_secret_key=keys / "learner" / "learner.key_secret",
                         curve_clients_dir=keys / "clients") as learner:
        arm = Peer(learner, keys / "clients" / "arm.key_secret", server_key)
        other = Peer(learner, keys / "clients" / "other.key_secret", server_key)
        try:
            arm.send(frame(1, rows(50), session="arm-session"))
            assert acked(receive_outcomes(arm, 1)) == {1}
            other.send(frame(2, rows(50), session="arm-session"))  # the arm's next number, claimed by another key
            assert kinds(receive_outcomes(other, 1)) == ["unauthorized"]
            arm.send(frame(2, rows(50, seed=2), session="arm-session"))
            assert acked(receive_outcomes(arm, 1)) == {2}  # still the arm's: stored, not taken for a duplicate
        finally:
            arm.close()
            other.close()
        with ControlClient(f"tcp://127.0.0.1:{learner.settings.port + 2}", 5.0, "test", keys / "clients" / "arm.key_secret",
                           server_key, token=learner.rundir.token("control")[0]) as client:  # CURVE on control too
            status = client.call("status")
    assert status["transitions_total"] == 100 and status["rejected"]["data"] == {"unauthorized": 1}


# ---- item 5: control needs the run's token ---------------------------------------------------------
def test_the_learners_control_channel_refuses_requests_without_the_runs_token(tmp_path):
    with running_learner(tmp_path / "run") as learner:
        token = learner.rundir.token("control")[0]
        for wrong in ("", "wrong", token[:-1], token + "x"):
            with ControlClient(f"tcp://127.0.0.1:{learner.settings.port + 2}", 5.0, token=wrong) as intruder:
                for command in ("pause", "stop", "status"):
                    with pytest.raises(ControlError) as error:
                        intruder.call(command)
                    assert error.value.kind == "unauthorized", (wrong, command)
        status = status_of(learner)
        assert not learner.stop_requested.is_set()
    assert status["state"] != "paused" and status["rejected"]["control"] == {"unauthorized": 12}
    assert (tmp_path / "run" / "control.token").stat().st_mode & 0o077 == 0


# ---- item 4: a damaged replay log ------------------------------------------------------------------
def test_a_learner_reads_past_a_damaged_record_and_reports_it(tmp_path):
    with running_learner(tmp_path / "run") as learner:
        peer = Peer(learner)
        try:
            for seq in range(1, 11):
                peer.send(frame(seq, rows(50, seed=seq)))
            assert acked(receive_outcomes(peer, 10)) == set(range(1, 11))
        finally:
            peer.close()
    segment = next((tmp_path / "run" / "replay").glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the log: one record of ten
    segment.write_bytes(bytes(data))
    with running_learner(tmp_path / "run") as learner:
        status = status_of(learner)
    assert status["transitions_total"] == 9 * 50 and status["replay_damaged_stretches"] == 1
    assert status["replay_damaged_bytes"] == len(data) // 10 and segment.stat().st_size == len(data)
    events = MetricsStore(tmp_path / "run" / "metrics.sqlite").events()
    assert [kind for _, _, _, kind, _ in events].count("replay_damaged") == 1


# ---- item 9: ingest budget --------------------------------------------------------------------------
def test_a_burst_beyond_the_senders_rate_is_refused_unacknowledged(tmp_path):
    # 100 transitions/s: the bucket holds 100 (max_batch_transitions), i.e. two frames of 50
    with running_learner(tmp_path / "run", max_ingest_rate=100, max_batch_transitions=100) as learner:
        peer = Peer(learner)
        try:
            for seq in range(1, 7):
                peer.send(frame(seq, rows(50, seed=seq)))
            replies = receive_outcomes(peer, 6)
            assert acked(replies) == {1, 2} and kinds(replies) == ["rate_limited"] * 4
            peer.send(frame(1, rows(50, seed=1)))  # a resend of what is stored: acknowledged, bucket empty or not
            # another session has its own bucket, even under the same (self-declared) name: nobody can spend
            # an actor's budget by calling itself by the actor's name
            peer.send(frame(1, rows(50), sender="arm", session="s2"))
            assert acked(receive_outcomes(peer, 2)) == {1}
            time.sleep(0.6)  # 60 transitions' worth refilled
            peer.send(frame(3, rows(50, seed=3)))
            assert acked(receive_outcomes(peer, 1)) == {3}
        finally:
            peer.close()
        status = status_of(learner)
    assert status["rejected"]["data"] == {"rate_limited": 4} and status["transitions_total"] == 200


def test_made_up_sessions_together_meet_the_overall_rate(tmp_path):
    with running_learner(tmp_path / "run", max_total_ingest_rate=100, max_batch_transitions=100) as learner:
        peer = Peer(learner)
        try:
            for seq in range(1, 5):  # four sessions of one frame each: each within its own budget
                peer.send(frame(seq, rows(50, seed=seq), session=f"made-up-{seq}"))
            replies = receive_outcomes(peer, 4)
        finally:
            peer.close()
        assert len(acked(replies)) == 2 and kinds(replies) == ["rate_limited"] * 2
        assert status_of(learner)["transitions_total"] == 100


def test_transitions_beyond_the_disk_budget_are_refused_unacknowledged(tmp_path):
    with running_learner(tmp_path / "run", max_replay_bytes=1) as learner:  # the first record fills it
        peer = Peer(learner)
        try:
            peer.send(frame(1, rows(50)))
            assert acked(receive_outcomes(peer, 1)) == {1}
            peer.send(frame(2, rows(50)))
            peer.send(frame(1, rows(50)))  # a resend of a stored batch is still acknowledged
            replies = receive_outcomes(peer, 2)
        finally:
            peer.close()
        assert kinds(replies) == ["disk_budget"] and acked(replies) == {1}
        status = status_of(learner)
    assert status["rejected"]["data"] == {"disk_budget": 1} and status["transitions_total"] == 50
    assert status["replay_bytes"] > 50 * 8 * 4


def test_an_actor_keeps_the_batches_a_rate_limit_refuses_and_delivers_them_later(tmp_path):
    with running_learner(tmp_path / "run", max_ingest_rate=400, max_batch_transitions=100) as learner:
        settings = ActorSettings(learner=f"127.0.0.1:{learner.settings.port}", env="MultiGoal-v0", name="arm",
                                 control_bind="", max_batch_transitions=100, resend_after_s=0.3)
        link = ActorLink(settings, "arm", obs_dim=2, act_dim=2, status=lambda *args: {})
        link.start()
        try:
            link.outgoing.extend(rows(1000))  # ten batches at once; the bucket takes four
            wait_for(lambda: link.refused.get("rate_limited"), 20, "the learner to refuse a batch")
            assert link.dropped_rows == 0 and link.unacked_rows > 0
            wait_for(lambda: link.acked_rows == 1000, 30, "every batch to be delivered in the end")
            assert link.unacked_rows == 0 and link.dropped_rows == 0
        finally:
            link.stopping.set()
            link.join(10)
        status = status_of(learner)
    assert status["transitions_total"] == 1000 and status["rejected"]["data"]["rate_limited"] >= 1
