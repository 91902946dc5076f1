"""`robot-sql bench transport`: how fast the service moves data, next to what ZeroMQ alone can do.

1. Ingest: 1 and 4 sender processes stream transitions frames (the actor's wire format, a
   window of unacknowledged frames each: 64 and 256 by default) to a real `robot-sql learner` process with training
   off; a transition counts once the learner has acknowledged it, i.e. made it durable. The
   same frames, over the same DEALER -> ROUTER pattern with the same window, then go to a raw
   ZeroMQ sink process that receives each frame in full (copied out of ZeroMQ) and acknowledges
   it without decoding it: the transport's ceiling on this machine in this run (ratio = learner
   / raw). A second ceiling: the same bytes appended to a file with one fsync per window
   (ratio_to_disk), since an acknowledgement waits for the disk.
2. Weight push: the learner's encoding of the policy weights, published on an XPUB, until a
   real ActorLink (the actor's network thread) has validated them and built a policy from
   them; p50/p99 over many pushes for reference network sizes.
3. Replay memory: RSS and disk per million transitions held by the durable replay store,
   and the time to reload them on a restart.
"""
from __future__ import annotations

import gc
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import yaml
import zmq

from robot_sql.malloc import release_free_memory
from robot_sql.ports import free_port_block
from robot_sql.protocol import ControlClient, ControlError, decode, encode
from robot_sql.replay import pack_batch
from robot_sql.rundir import RunDir

# (name, obs_dim, act_dim, hidden sizes): MultiGoal with the reference code's sizes, the Sawyer tasks
REFERENCE_NETWORKS = [("multigoal-128x128", 2, 2, (128, 128)), ("sawyer-128x128", 23, 7, (128, 128)),
                      ("sawyer-256x256", 23, 7, (256, 256)), ("sawyer-512x512", 23, 7, (512, 512))]
SAWYER_DIMS = (23, 7)


def transitions_frames(session: str, count: int, rows: int, obs_dim: int, act_dim: int) -> list[bytes]:
    rng = np.random.default_rng(abs(hash(session)) % 2 ** 32)
    batch = {"observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
             "actions": rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
             "rewards": rng.normal(size=rows).astype(np.float32),
             "next_observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
             "terminals": np.zeros(rows, np.float32)}
    packed = pack_batch(batch, obs_dim, act_dim)
    return [encode("transitions", session, session=session, seq=seq, obs_dim=obs_dim, act_dim=act_dim, rows=packed)
            for seq in range(1, count + 1)]


def sender(address: str, session: str, count: int, rows: int, window: int, go, results) -> None:
    """One actor-like sender: keep `window` frames in flight, count transitions acknowledged."""
    frames = transitions_frames(session, count, rows, *SAWYER_DIMS)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(address)
    go.wait()
    started = time.perf_counter()
    sent = acked = 0
    while acked < count:
        while sent < count and sent - acked < window:
            socket.send(frames[sent])
            sent += 1
        if socket.poll(10_000):
            reply = socket.recv()
            acked += 1 if reply == b"ack" else len(decode(reply, {"ack"}).body["seqs"])
        else:
            raise RuntimeError(f"{session}: no acknowledgement for 10 s")
    results.put((acked * rows, time.perf_counter() - started))
    context.destroy(linger=0)


def raw_sink(address: str, ready) -> None:
    """The ceiling: a ROUTER that receives every frame whole and acknowledges it without decoding it."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.bind(address)
    ready.set()
    while True:
        identity, _ = socket.recv_multipart()
        socket.send_multipart([identity, b"ack"])


def ingest_rate(mp, address: str, senders: int, count: int, rows: int, window: int) -> float:
    go, results = mp.Event(), mp.Queue()
    processes = [mp.Process(target=sender, args=(address, f"bench-{senders}-{index}-{time.time_ns()}", count, rows,
                                                 window, go, results)) for index in range(senders)]
    for process in processes:
        process.start()
    time.sleep(1.0)  # senders encode their frames and connect before the clock starts
    go.set()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(10)
    return sum(transitions for transitions, _ in outcomes) / max(elapsed for _, elapsed in outcomes)


def disk_rate(folder: Path, count: int, rows: int, window: int) -> float:
    """Durable-write ceiling: the same frames appended to a file, one fsync per `window` of them (as acks need)."""
    frames = transitions_frames("disk", count, rows, *SAWYER_DIMS)
    path = folder / "disk-ceiling.log"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    started = time.perf_counter()
    for first in range(0, count, window):
        for frame in frames[first: first + window]:
            os.write(descriptor, frame)
        os.fsync(descriptor)
    elapsed = time.perf_counter() - started
    os.close(descriptor)
    path.unlink()
    return count * rows / elapsed


def measure_ingest(work: Path, sender_counts: list[int], count: int, rows: int, windows: list[int], repeats: int) -> dict:
    mp = multiprocessing.get_context("spawn")
    port = free_port_block(11)  # the learner on PORT..PORT+2, the raw sink on PORT+10
    config = work / "learner.yaml"
    config.write_text(yaml.safe_dump({"env": "SawyerReach-v0", "port": port, "min_replay": 10 ** 9, "torch_threads": 1,
                                      "max_batch_transitions": max(rows, 1),
                                      "max_ingest_rate": None, "max_total_ingest_rate": None}))  # the ceiling is measured
    learner = subprocess.Popen([str(Path(sys.executable).with_name("robot-sql")), "learner", "--run-dir", str(work / "run"),
                                "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = mp.Event()
    sink = mp.Process(target=raw_sink, args=(f"tcp://127.0.0.1:{port + 10}", ready), daemon=True)
    sink.start()
    try:
        _wait_for_learner(f"tcp://127.0.0.1:{port + 2}", RunDir.create(work / "run").token("control")[0], learner)
        ready.wait(30)
        results: dict = {}
        for window in windows:
            for senders in sender_counts:
                samples = {"learner": [], "raw": [], "disk": []}
                for _ in range(repeats):  # alternate, so that load from elsewhere hits all alike; report medians
                    samples["learner"].append(ingest_rate(mp, f"tcp://127.0.0.1:{port}", senders, count, rows, window))
                    samples["raw"].append(ingest_rate(mp, f"tcp://127.0.0.1:{port + 10}", senders, count, rows, window))
                    samples["disk"].append(disk_rate(work, count * senders, rows, window * senders))
                service, raw, disk = (float(np.median(samples[name])) for name in ("learner", "raw", "disk"))
                results.setdefault(f"window_{window}", {})[f"{senders}_actors"] = {
                    "learner_transitions_per_s": round(service), "raw_zmq_transitions_per_s": round(raw),
                    "ratio": round(service / raw, 3), "disk_fsync_transitions_per_s": round(disk),
                    "ratio_to_disk": round(service / disk, 3),
                    "samples": {name: [round(v) for v in values] for name, values in samples.items()}}
                click.echo(f"ingest, {senders} actor(s), {window} messages in flight each: learner {service:,.0f}/s, "
                           f"raw ZeroMQ {raw:,.0f}/s (ratio {service / raw:.2f}), disk with fsync {disk:,.0f}/s "
                           f"(ratio {service / disk:.2f})")
        return {"rows_per_message": rows, "frame_bytes": len(transitions_frames("x", 1, rows, *SAWYER_DIMS)[0]),
                "windows": windows, "messages_per_actor": count, "repeats": repeats, **results}
    finally:
        learner.terminate()
        learner.wait(30)
        sink.terminate()


def _wait_for_learner(address: str, token: str, learner: subprocess.Popen) -> None:
    client = ControlClient(address, timeout_s=1.0, token=token)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if learner.poll() is not None:
            raise click.ClickException(f"the learner exited with status {learner.returncode}")
        try:
            client.call("status")
            return
        except ControlError:
            time.sleep(0.2)
    raise click.ClickException("the learner did not come up within 120 s")


def measure_weight_push(pushes: int) -> dict:
    import torch

    from robot_sql.actor import ActorLink
    from robot_sql.service_settings import ActorSettings
    from robot_sql.sql import Sampler

    torch.set_num_threads(1)  # as in `robot-sql actor`
    context = zmq.Context()
    publisher = context.socket(zmq.XPUB)
    publisher.setsockopt(zmq.XPUB_VERBOSE, 1)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    results = {}
    version = 0
    for name, obs_dim, act_dim, hidden in REFERENCE_NETWORKS:
        weights = Sampler(obs_dim, act_dim, hidden).weights()
        settings = ActorSettings(learner=f"127.0.0.1:{port - 1}", control_bind="")
        link = ActorLink(settings, "bench-actor", obs_dim, act_dim, status=dict)
        link.start()
        while publisher.recv()[:1] != b"\x01":  # wait for this link's subscription
            pass
        latencies = []
        for push in range(pushes + 5):
            version += 1
            frame = encode("weights", "bench", run="bench", version=version, hidden_sizes=list(hidden), weights=weights)
            started = last_sent = time.perf_counter()
            publisher.send(frame)
            while link.new_policy is None or link.new_policy[1] != version:
                now = time.perf_counter()
                if now > started + 5.0:
                    raise click.ClickException(f"weights version {version} did not arrive within 5 s")
                # The first pushes warm up and are not counted. Until one arrives the subscription may be
                # a stale one (an earlier link's, or a re-subscription), and PUB drops what nobody takes yet.
                if push < 5 and now - last_sent > 0.05:
                    publisher.send(frame)
                    last_sent = now
                time.sleep(0.0001)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.002)
        link.stopping.set()
        link.join()
        milliseconds = 1000 * np.asarray(latencies[5:])  # the first few warm up allocators
        frame_bytes = len(encode("weights", "bench", run="bench", version=version, hidden_sizes=list(hidden),
                                 weights=weights))
        results[name] = {"frame_bytes": frame_bytes, "p50_ms": round(float(np.percentile(milliseconds, 50)), 3),
                         "p99_ms": round(float(np.percentile(milliseconds, 99)), 3),
                         "max_ms": round(float(milliseconds.max()), 3)}
        click.echo(f"weight push {name} ({frame_bytes / 1024:.0f} KiB): p50 {results[name]['p50_ms']:.2f} ms, "
                   f"p99 {results[name]['p99_ms']:.2f} ms")
    context.destroy(linger=0)
    return {"pushes": pushes, "networks": results}


def _rss_bytes() -> int:
    """Resident memory of this process after freed heap memory went back to the OS (see robot_sql/malloc.py)."""
    gc.collect()
    release_free_memory()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_replay_memory(work: Path, transitions: int, rows: int = 256) -> dict:
    from robot_sql.replay_store import ReplayStore

    folder = work / "replay"
    frames = transitions // rows
    before = _rss_bytes()
    store = ReplayStore(folder, *SAWYER_DIMS, capacity=frames * rows, max_batch_rows=rows)
    body = decode(transitions_frames("memory", 1, rows, *SAWYER_DIMS)[0], {"transitions"}).body
    for seq in range(1, frames + 1):
        frame = encode("transitions", "memory", **{**body, "seq": seq})
        store.append(decode(frame, {"transitions"}), frame)
    store.flush()
    store.close()
    held = _rss_bytes() - before
    disk = sum(path.stat().st_size for path in folder.glob("segment-*.log"))
    del store
    started = time.perf_counter()
    reloaded = ReplayStore(folder, *SAWYER_DIMS, capacity=frames * rows, max_batch_rows=rows)
    reload_s = time.perf_counter() - started
    assert len(reloaded) == frames * rows
    scale = 1e6 / (frames * rows)
    result = {"obs_dim": SAWYER_DIMS[0], "act_dim": SAWYER_DIMS[1], "transitions": frames * rows,
              "rss_mib_per_million": round(held * scale / 2 ** 20, 1), "disk_mib_per_million": round(disk * scale / 2 ** 20, 1),
              "reload_s_per_million": round(reload_s * scale, 2)}
    click.echo(f"replay store: {result['rss_mib_per_million']} MiB RAM and {result['disk_mib_per_million']} MiB disk per "
               f"million transitions; reload {result['reload_s_per_million']} s per million")
    return result


@click.command("transport")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file for the results.")
@click.option("--messages", default=1000, show_default=True, help="Transitions messages per actor and run.")
@click.option("--rows", default=256, show_default=True, help="Transitions per message (an unpaced actor's full batch).")
@click.option("--window", "windows", multiple=True, type=int, default=(64, 256), show_default=True,
              help="Unacknowledged messages an actor keeps in flight (repeatable). The actor itself sends every batch at "
                   "once and keeps up to max_unacked_transitions (200 000: 781 messages of 256) unacknowledged.")
@click.option("--repeats", default=3, show_default=True, help="Alternating learner / raw runs per actor count (medians).")
@click.option("--pushes", default=200, show_default=True, help="Weight pushes per network size.")
@click.option("--memory-transitions", default=1_000_000, show_default=True, help="Transitions stored for the memory figure.")
def bench_transport_command(out: str, messages: int, rows: int, windows: tuple[int, ...], repeats: int, pushes: int,
                            memory_transitions: int) -> None:
    """Learner ingest vs raw ZeroMQ (1 and 4 actors), weight-push latency, replay memory per million transitions."""
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as folder:
        work = Path(folder)
        result = {
            "machine": {"cpus": multiprocessing.cpu_count(), "python": platform.python_version(),
                        "zmq": zmq.zmq_version(), "platform": platform.platform()},
            "ingest": measure_ingest(work, [1, 4], messages, rows, list(windows), repeats),
            "weight_push": measure_weight_push(pushes),
            "replay_memory": measure_replay_memory(work, memory_transitions),
        }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"-> {out}")
