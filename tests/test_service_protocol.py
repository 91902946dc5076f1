"""Wire protocol, durable replay store, control client and CURVE: real msgpack, real files, real sockets."""
from __future__ import annotations

import errno
import os
import select
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from robot_sql.protocol import (PROTOCOL_VERSION, ControlClient, ControlError, ProtocolError, RouterEndpoint,
                                check_transitions, decode, encode, keygen_command, secure_client, secure_server,
                                start_authenticator)
from robot_sql.replay import pack_batch, unpack_rows
from robot_sql.replay_store import ReplayStore, SequenceSet


def transitions(rows: int, obs_dim: int = 2, act_dim: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=rows).astype(np.float32),
            "next_observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
            "terminals": np.zeros(rows, np.float32)}


def rows_frame(seq: int, rows: np.ndarray, obs_dim: int = 2, act_dim: int = 2, session: str = "s1") -> bytes:
    return encode("transitions", "actor-test", session=session, seq=seq, obs_dim=obs_dim, act_dim=act_dim, rows=rows)


def transitions_frame(seq: int, rows: int = 4, session: str = "s1", obs_dim: int = 2, act_dim: int = 2) -> bytes:
    batch = transitions(rows, obs_dim, act_dim, seed=seq)
    return rows_frame(seq, pack_batch(batch, obs_dim, act_dim), obs_dim, act_dim, session)


def test_round_trip_keeps_arrays_exact():
    batch = transitions(5, seed=7)
    message = decode(transitions_frame(7, 5), {"transitions"})
    assert (message.type, message.sender, message.body["seq"]) == ("transitions", "actor-test", 7)
    for name, array in unpack_rows(message.body["rows"], 2, 2).items():
        np.testing.assert_array_equal(array, batch[name])
    assert check_transitions(message.body, 2, 2, max_rows=10) == 5


def raw(**fields) -> bytes:
    return msgpack.packb({"type": "ping", "v": PROTOCOL_VERSION, "sender": "x", "session": "s", **fields})


def array(dtype="<f4", shape=(2,), data=None) -> dict:
    data = np.zeros(shape, dtype).tobytes() if data is None else data
    return {"dtype": dtype, "shape": list(shape), "data": data}


def weights_frame(weights: dict, version=1) -> bytes:
    return msgpack.packb({"type": "weights", "v": PROTOCOL_VERSION, "sender": "x", "run": "r", "version": version,
                          "hidden_sizes": [4], "weights": weights})


@pytest.mark.parametrize("frame, accept, kind", [
    (b"\xc1", {"ping"}, "malformed"),  # never-used msgpack byte
    (b"\xdb\xff\xff\xff\xffab", {"ping"}, "malformed"),  # str32 declaring 4 GiB
    (msgpack.packb([1, 2, 3]), {"ping"}, "malformed"),
    (raw(v=PROTOCOL_VERSION + 1), {"ping"}, "version"),
    (raw(v=1), {"ping"}, "version"),  # five-column transitions, before rows
    (raw(v="1"), {"ping"}, "version"),
    (raw(type="reboot"), {"ping"}, "unknown_type"),
    (raw(), {"transitions"}, "unexpected"),
    (raw(extra=1), {"ping"}, "schema"),
    (raw(session=5), {"ping"}, "schema"),
    (weights_frame({"w": array(dtype="|O")}), {"weights"}, "dtype"),
    (weights_frame({"w": array(dtype=">f4")}), {"weights"}, "dtype"),
    (weights_frame({"w": {**array(), "shape": [3]}}), {"weights"}, "shape"),
    (weights_frame({"w": {**array(), "shape": [2 ** 20, 2 ** 20]}}), {"weights"}, "oversized"),
    (weights_frame({"w": array(data=np.array([0.0, np.nan], np.float32).tobytes())}), {"weights"}, "nonfinite"),
    (weights_frame({"w": array(data=np.array([np.inf, 0.0], np.float32).tobytes())}), {"weights"}, "nonfinite"),
    (weights_frame({"w": array()}, version=-1), {"weights"}, "schema"),
    (msgpack.packb(msgpack.ExtType(5, b"x")), {"ping"}, "malformed"),
])
def test_bad_frames_raise_a_typed_error(frame, accept, kind):
    with pytest.raises(ProtocolError) as error:
        decode(frame, accept)
    assert error.value.kind == kind


def test_oversized_frame_and_wrong_transition_shapes_are_rejected():
    with pytest.raises(ProtocolError, match="oversized"):
        decode(b"\x00" * 2048, {"ping"}, max_bytes=1024)
    body = decode(transitions_frame(1, obs_dim=3), {"transitions"}).body
    with pytest.raises(ProtocolError, match=r"\(3, 2\), this learner's environment has \(2, 2\)") as error:
        check_transitions(body, obs_dim=2, act_dim=2, max_rows=100)
    assert error.value.kind == "shape"
    # rows whose width does not match the dimensions they claim
    body = decode(rows_frame(1, np.zeros((4, 9), np.float32)), {"transitions"}).body
    with pytest.raises(ProtocolError, match=r"expected \[n, 8\]"):
        check_transitions(body, 2, 2, max_rows=100)
    with pytest.raises(ProtocolError) as error:
        check_transitions(decode(transitions_frame(1, rows=50), {"transitions"}).body, 2, 2, max_rows=10)
    assert error.value.kind == "oversized"


def test_transition_rows_must_be_float32_and_finite():
    rows = pack_batch(transitions(3), 2, 2)
    with pytest.raises(ProtocolError) as error:
        check_transitions(decode(rows_frame(1, rows.astype(np.float64)), {"transitions"}).body, 2, 2, max_rows=10)
    assert error.value.kind == "dtype"  # the buffer is float32: 1e300 in float64 would become inf there
    rows[:, 4] = 3e38  # rewards: huge but finite
    np.testing.assert_array_equal(decode(rows_frame(1, rows), {"transitions"}).body["rows"], rows)
    for bad in (np.inf, -np.inf, np.nan):
        rows[2, 4] = bad
        with pytest.raises(ProtocolError, match="nonfinite"):
            decode(rows_frame(1, rows), {"transitions"})


plain = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(payload=st.binary(max_size=200) | plain.map(msgpack.packb),
       fields=st.dictionaries(st.sampled_from(["type", "v", "sender", "session", "seq", "obs_dim", "act_dim", "rows", "seqs"]), plain))
def test_any_input_gives_a_message_or_a_protocol_error(payload, fields):
    for frame in (payload, msgpack.packb(fields)):
        try:
            decode(frame, {"transitions", "ping", "ack", "weights", "request"})
        except ProtocolError:
            pass


# ---- replay store ------------------------------------------------------------------------------
def test_store_survives_reopen_ignores_duplicates_and_cuts_a_torn_tail(tmp_path):
    store = ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=100)
    for seq in (1, 2, 3):
        frame = transitions_frame(seq)
        assert store.append(decode(frame, {"transitions"}), frame) == 4
    frame = transitions_frame(2)
    assert store.append(decode(frame, {"transitions"}), frame) == 0  # a resend
    store.sync()
    store.close()
    segment = next(tmp_path.glob("segment-*.log"))
    with open(segment, "ab") as file:  # a crash in the middle of writing a fourth record
        file.write(b"RSQ1\x40\x00\x00\x00garbage")
    size = segment.stat().st_size
    reopened = ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=100)
    assert len(reopened) == 12 and {session: set(seqs) for session, seqs in reopened.seen.items()} == {"s1": {1, 2, 3}}
    torn = size - len(b"RSQ1\x40\x00\x00\x00garbage")
    assert reopened.damage == [{"segment": segment.name, "offset": torn, "bytes": 15}]
    assert segment.stat().st_size == torn and (tmp_path / f"{segment.stem}.torn-at-{torn}").read_bytes()[:4] == b"RSQ1"
    np.testing.assert_array_equal(reopened.buffer.contents()["observations"][:4], transitions(4, seed=1)["observations"])
    frame = transitions_frame(4)
    reopened.append(decode(frame, {"transitions"}), frame)
    reopened.close()
    assert set(ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=100).seen["s1"]) == {1, 2, 3, 4}


def stored_records(folder, frames, segment_bytes=256 * 1024 * 1024) -> list[tuple[Path, int, int]]:
    """Append `frames` to a new store; returns where each record landed: (segment, offset, size)."""
    store = ReplayStore(folder, obs_dim=2, act_dim=2, capacity=1000, segment_bytes=segment_bytes)
    for frame in frames:
        store.append(decode(frame, {"transitions"}), frame)
        store.flush()
    store.sync()
    store.close()
    places = []
    for segment in sorted(folder.glob("segment-*.log")):  # walk the record headers: magic, length, crc
        data, offset = segment.read_bytes(), 0
        while offset < len(data):
            size = 12 + int.from_bytes(data[offset + 4: offset + 8], "little")
            places.append((segment, offset, size))
            offset += size
    assert len(places) == len(frames)
    return places


def flip(path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("where", ["payload", "length field", "magic"])
def test_a_flipped_byte_mid_log_loses_that_record_only(tmp_path, where):
    places = stored_records(tmp_path, [transitions_frame(seq) for seq in range(1, 11)])
    segment, offset, size = places[4]  # the fifth record
    before = segment.stat().st_size
    flip(segment, offset + {"payload": 12 + size // 2 - 6, "length field": 5, "magic": 1}[where])
    reopened = ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=1000)
    assert set(reopened.seen["s1"]) == set(range(1, 11)) - {5} and len(reopened) == 9 * 4
    assert reopened.damage == [{"segment": segment.name, "offset": offset, "bytes": size}]
    assert segment.stat().st_size == before  # nothing cut: the records after the damage are kept on disk
    frame = transitions_frame(11)  # and appends go on after them
    reopened.append(decode(frame, {"transitions"}), frame)
    reopened.close()
    assert set(ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=1000).seen["s1"]) == set(range(1, 12)) - {5}


def test_damage_in_an_earlier_segment_skips_it_and_reads_on(tmp_path):
    places = stored_records(tmp_path, [transitions_frame(seq) for seq in range(1, 9)], segment_bytes=400)
    segments = sorted({place[0] for place in places})
    assert len(segments) >= 3
    first = [place for place in places if place[0] == segments[0]]
    segment, offset, size = first[-1]  # damage running to the end of a segment that is not the last
    with open(segment, "r+b") as file:
        file.truncate(offset + size // 2)
    reopened = ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=1000, segment_bytes=400)
    lost = places.index(first[-1]) + 1
    assert set(reopened.seen["s1"]) == set(range(1, 9)) - {lost}
    assert reopened.damage == [{"segment": segment.name, "offset": offset, "bytes": size // 2}]
    assert segment.stat().st_size == offset + size // 2  # left as found


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 60), max_size=80))
def test_sequence_set_is_a_set_of_few_intervals(numbers):
    seen = SequenceSet()
    for n in numbers:
        seen.add(n)
    assert set(seen) == set(numbers) and all((n in seen) == (n in numbers) for n in range(0, 62))
    # intervals are sorted, disjoint and never adjacent (adjacent ones are merged)
    assert all(start <= end for start, end in zip(seen.starts, seen.ends))
    assert all(end + 1 < start for end, start in zip(seen.ends, seen.starts[1:]))


def test_store_commits_in_the_background_and_reports_a_failing_disk(tmp_path, monkeypatch):
    store = ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=100)
    for seq in (1, 2, 3):
        frame = transitions_frame(seq)
        store.append(decode(frame, {"transitions"}), frame)
    assert len(store) == 12 and store.appended == 0  # in the buffer at once, in the log at the next flush
    store.flush()
    assert select.select([store.durable_signal], [], [], 5.0)[0], "no durable signal within 5 s"
    deadline = time.monotonic() + 5.0
    while store.durable < 3 and time.monotonic() < deadline:  # one fsync may cover only the first records
        time.sleep(0.001)
    assert store.durable == store.appended == 3
    os.eventfd_read(store.durable_signal)

    def broken_disk(fd):
        raise OSError(errno.EIO, "simulated disk error")

    monkeypatch.setattr("robot_sql.replay_store.os.fdatasync", broken_disk)
    frame = transitions_frame(4)
    store.append(decode(frame, {"transitions"}), frame)
    store.flush()
    assert select.select([store.durable_signal], [], [], 5.0)[0], "a failing fsync was not signalled"
    assert isinstance(store.failure, OSError) and store.durable == 3  # the fourth batch never counts as durable


def test_store_rolls_segments_and_refuses_another_environments_log(tmp_path):
    store = ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=1000, segment_bytes=500)
    for seq in range(1, 11):
        frame = transitions_frame(seq)
        store.append(decode(frame, {"transitions"}), frame)
    store.close()
    assert len(list(tmp_path.glob("segment-*.log"))) > 2
    assert ReplayStore(tmp_path, obs_dim=2, act_dim=2, capacity=1000).transitions_total == 40
    with pytest.raises(RuntimeError, match="another environment"):
        ReplayStore(tmp_path, obs_dim=5, act_dim=2, capacity=1000)


# ---- control channel ---------------------------------------------------------------------------
def serve_requests(endpoint: RouterEndpoint, stop: threading.Event, delay_s: float = 0.0) -> None:
    while not stop.is_set():
        if endpoint.socket.poll(10):
            received = endpoint.receive()
            if received is not None:
                time.sleep(delay_s)
                envelope, message, _ = received
                endpoint.send(envelope, encode("reply", "server", result={"echo": message.body["command"]}))


def test_control_client_times_out_without_a_server_then_recovers_with_a_fresh_socket():
    context = zmq.Context.instance()
    socket = context.socket(zmq.ROUTER)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    client = ControlClient(f"tcp://127.0.0.1:{port}", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ControlError) as error:  # bound but nobody answers
        client.call("status")
    assert error.value.kind == "timeout" and time.monotonic() - started < 5.0  # 0.3 s; a hang would be forever
    stop = threading.Event()
    thread = threading.Thread(target=serve_requests, args=(RouterEndpoint(socket, "control", "server", {"request"}), stop))
    thread.start()
    try:
        assert client.call("status") == {"echo": "status"}
        assert client.call("pause") == {"echo": "pause"}
    finally:
        stop.set()
        thread.join()
        socket.close(linger=0)
        client.close()
    with pytest.raises(ControlError):  # nobody there at all: still returns in time
        ControlClient("tcp://127.0.0.1:9", timeout_s=0.2).call("status")


def test_router_endpoint_answers_bad_frames_with_errors_and_counts_them():
    context = zmq.Context.instance()
    server, peer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    peer.connect(f"tcp://127.0.0.1:{port}")
    endpoint = RouterEndpoint(server, "control", "server", {"request"})
    try:
        sent = [b"junk", raw(), [b"a", b"b", b"c"], encode("request", "peer", command="status", args={}, token="")]
        for frames in sent:
            peer.send_multipart(frames if isinstance(frames, list) else [frames])
        received = []
        while endpoint.counter.received < len(sent):
            server.poll(1000)
            received.append(endpoint.receive())
        assert [r is None for r in received] == [True, True, True, False]
        assert endpoint.counter.accepted == 1
        assert {k: n for k, n in endpoint.counter.rejected.items() if n} == {"malformed": 1, "unexpected": 1, "framing": 1}
        replies = [decode(peer.recv(), {"error"}).body["kind"] for _ in range(3) if peer.poll(1000)]
        assert replies == ["malformed", "unexpected", "framing"]
    finally:
        server.close(linger=0)
        peer.close(linger=0)


# ---- CURVE ---------------------------------------------------------------------------------------
def test_keygen_and_curve_let_only_key_holders_in(tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    runner = CliRunner()
    for name in ("learner", "actor", "intruder"):
        assert runner.invoke(keygen_command, ["--out", str(tmp_path / name), "--name", name]).exit_code == 0
    assert runner.invoke(keygen_command, ["--out", str(tmp_path / "actor"), "--name", "actor"]).exit_code != 0  # no overwrite
    context = zmq.Context()
    authenticator = start_authenticator(context, tmp_path / "actor")  # the actor's public key is allowed
    server = context.socket(zmq.ROUTER)
    secure_server(server, tmp_path / "learner" / "learner.key_secret")
    port = server.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    thread = threading.Thread(target=serve_requests, args=(RouterEndpoint(server, "control", "server", {"request"}), stop))
    thread.start()
    address, server_key = f"tcp://127.0.0.1:{port}", tmp_path / "learner" / "learner.key"
    try:
        assert ControlClient(address, 2.0, secret_key_file=tmp_path / "actor" / "actor.key_secret",
                             server_key_file=server_key).call("status") == {"echo": "status"}
        with pytest.raises(ControlError):  # a key pair the learner does not know
            ControlClient(address, 0.5, secret_key_file=tmp_path / "intruder" / "intruder.key_secret",
                          server_key_file=server_key).call("status")
        with pytest.raises(ControlError):  # plain text to a CURVE server
            ControlClient(address, 0.5).call("status")
        with pytest.raises(ValueError, match="both"):
            secure_client(context.socket(zmq.REQ), tmp_path / "actor" / "actor.key_secret", None)
    finally:
        stop.set()
        thread.join()
        authenticator.stop()
        context.destroy(linger=0)


# ---- bad configuration ----------------------------------------------------------------------------
def test_bad_service_configs_exit_2_with_a_clear_message(tmp_path):
    from robot_sql.actor import actor_command
    from robot_sql.learner import learner_command

    config = tmp_path / "learner.yaml"
    config.write_text("utd_ratio: 1.0\nreplay_capacty: 10\n")
    result = CliRunner().invoke(learner_command, ["--run-dir", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2 and "replay_capacty" in result.output
    assert not (tmp_path / "run").exists()
    config.write_text("sql: {kernel_particles: 2}\nport: 1\n")  # a valid port but nonsense SQL settings
    result = CliRunner().invoke(learner_command, ["--run-dir", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2 and "kernel_particles" in result.output
    result = CliRunner().invoke(actor_command, ["--learner", "no-port-here", "--env", "MultiGoal-v0"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
    result = CliRunner().invoke(actor_command, ["--learner", "127.0.0.1:5555", "--env", "NoSuchEnv-v9"])
    assert result.exit_code == 2 and "NoSuchEnv-v9" in result.output
