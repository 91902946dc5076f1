"""The learner service: stores transitions durably, trains SQL, publishes weights.

Two threads:
  * the I/O thread owns every socket. It validates each frame, appends transitions to the
    replay store and writes them to its log once per batch of frames (up to DRAIN_FRAMES); the
    store's own thread fsyncs in groups, and a batch is acknowledged once an fsync covers it,
    while later frames keep arriving. It answers pings and control requests
    and publishes the weight frames the training thread hands it. It never waits on torch.
  * the training (main) thread runs SQL updates while updates < utd_ratio * (transitions
    stored - min_replay), publishes a new weight version every `publish_every` updates, and
    writes atomic checkpoints (networks, optimisers, counters, RNG). An update with a non-finite
    loss or gradient is skipped (SoftQLearning.update) and counted; MAX_NONFINITE_UPDATES in a
    row pause training with an event, since the data or the settings need a look.

Limits (docs/service.md): transitions beyond `max_abs_value`, beyond a sender's
`max_ingest_rate` or beyond the replay log's `max_replay_bytes` are refused, unacknowledged, so
the actor keeps them and resends; stats carry only the names actors report (STATS_NAMES), and
never in the learner's name.

Restart on the same run directory: the replay log is read back (everything acknowledged is
there), the last checkpoint is loaded, and weight versions continue above every version
published before, crash or not (they are reserved on disk in blocks). One learner per run
directory: a second one finds learner.lock held and exits with status 2.

Control requests need the run's control token (<run-dir>/control.token, made at first start).
"""
from __future__ import annotations

import collections
import io
import json
import logging
import math
import os
import queue
import signal
import threading
import time
import uuid
from pathlib import Path

import click
import gymnasium
import numpy as np
import torch
import zmq

from robot_sql.config import ConfigError, dump_settings, load_settings, refuse_unknown_environment
from robot_sql.protocol import (MAX_STATS_VALUES, STATS_NAMES, ProtocolError, RejectCounter, RouterEndpoint,
                                check_transitions, control_check, encode, secure_server, session_tag,
                                start_authenticator)
from robot_sql.replay_store import ReplayStore
from robot_sql.rundir import MetricsStore, RunDir, RunDirLocked, atomic_write_bytes
from robot_sql.service_settings import LearnerSettings
from robot_sql.sql import CHECKPOINT_READ_ERRORS, SoftQLearning, SQLConfig, load_checkpoint
from robot_sql.train import check_box_spaces, initial_agent, make_sql_config, preset

SOURCE = "learner"
VERSION_BLOCK = 1000  # weight versions reserved on disk at a time
DRAIN_FRAMES = 32  # data frames taken per poll; then acks for what has become durable go out
MAX_TRACKED_SESSIONS = 1024  # actor sessions in the status table; the least recently heard goes first
ACTOR_SILENT_S = 5.0  # an actor not heard from for this long counts as gone (it pings every 0.5 s)
MAX_NONFINITE_UPDATES = 100  # skipped updates in a row that pause training
MAX_DAMAGE_EVENTS = 10  # events for damaged stretches of the replay log found on start; the rest are counted
log = logging.getLogger("robot_sql.learner")


def make_room(table: dict, last_heard) -> None:
    """Keep a table of peers below MAX_TRACKED_SESSIONS entries: the least recently heard goes."""
    if len(table) >= MAX_TRACKED_SESSIONS:
        del table[min(table, key=lambda key: last_heard(table[key]))]


class TokenBucket:
    """At most `rate` transitions a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()

    def take(self, count: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if count > self.tokens:
            return False
        self.tokens -= count
        return True


class WeightVersions:
    """Strictly increasing weight versions across restarts: a block is reserved on disk before use.

    The run id beside them tells actors when a different run directory is being served (whose
    versions start again from 1).
    """

    def __init__(self, path: Path):
        self.path = path
        saved = json.loads(path.read_text()) if path.exists() else {"run": uuid.uuid4().hex[:12], "reserved": 0}
        self.run, self.current = saved["run"], saved["reserved"]
        self.reserved = self.current

    def next(self) -> int:
        self.current += 1
        if self.current > self.reserved:
            self.reserved = self.current + VERSION_BLOCK
            atomic_write_bytes(self.path, json.dumps({"run": self.run, "reserved": self.reserved}).encode())
        return self.current


def make_env(env_id: str) -> gymnasium.Env:
    try:
        env = gymnasium.make(env_id)
    except Exception as error:
        raise ConfigError(f"cannot make environment {env_id!r}: {error}") from error
    check_box_spaces(env, env_id)
    return env


class Learner:
    def __init__(self, run: RunDir, settings: LearnerSettings):
        self.rundir, self.settings = run, settings
        self.sender = f"learner-{settings.port}"
        self.context, self.authenticator = zmq.Context(), None
        try:
            self._open_sockets()  # first: a taken port fails at once, not after the whole replay has been read
            self._load(run, settings)
        except BaseException:  # a taken port, a bad setting, an unreadable run: the ports are given back at once
            self._close_sockets()
            raise

    def _open_sockets(self) -> None:
        if self.settings.curve_secret_key:
            self.authenticator = start_authenticator(self.context, self.settings.curve_clients_dir)
        # no map or list on the data socket is longer than a stats map: a longer one fails at its header
        self.data = self._bind(zmq.ROUTER, 0, "data", {"transitions", "ping", "stats"}, self._check_data, MAX_STATS_VALUES)
        self.weights_socket = self._bind(zmq.XPUB, 1, "weights", set())
        self.weights_socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every new subscriber reaches us: send it the latest weights
        self.weights_counter = RejectCounter("weights")
        token, _ = self.rundir.token("control")
        self.control = self._bind(zmq.ROUTER, 2, "control", {"request"}, control_check(token))

    def _load(self, run: RunDir, settings: LearnerSettings) -> None:
        env = make_env(settings.env)  # for its spaces and the per-env SQL preset
        config = make_sql_config(env, settings.env, settings.sql, settings.seed)
        self.utd_ratio = settings.utd_ratio or preset(settings.env).updates_per_step
        checkpoint_path = run.checkpoints / "learner.pt"
        saved, unreadable = self._saved_state(run)
        if saved is not None:
            state, path = saved
            self.agent = SoftQLearning.from_state_dict(state["agent"], device=settings.device)
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = json.loads(state["sample_rng"])
            log.info("resuming from %s at %d updates", path, self.agent.updates)
            if self.agent.config != config:
                log.warning("the checkpoint's SQL settings differ from the configured ones; the checkpoint's are used")
        elif settings.init is not None:  # a new run from a trained or composed agent (robot-sql train / compose)
            self.agent = initial_agent(settings.init, env, settings.env, settings.sql, device=settings.device)
            self.rng = np.random.default_rng(config.seed)
            log.info("starting from %s (%d updates there)", settings.init, self.agent.updates)
        else:
            self.agent = SoftQLearning(config, device=settings.device)
            self.rng = np.random.default_rng(config.seed)
        env.close()
        self.store = ReplayStore(run.replay, config.obs_dim, config.act_dim, settings.replay_capacity,
                                 settings.max_batch_transitions, max_abs_value=settings.max_abs_value,
                                 max_frame_bytes=settings.max_frame_bytes)
        log.info("replay store: %d transitions from %d actor sessions", self.store.transitions_total, len(self.store.seen))
        if self.store.skipped:
            log.warning("replay store: %d transitions beyond max_abs_value=%g left out", self.store.skipped,
                        settings.max_abs_value)
        self.versions = WeightVersions(run.root / "weight_version.json")
        self.metrics = MetricsStore(run.metrics)
        for path, error in unreadable:
            self._event("checkpoint_damaged", f"checkpoint {path.name} cannot be read ({error}); an older one was used")
        for damage in self.store.damage[:MAX_DAMAGE_EVENTS]:
            self._event("replay_damaged", f"replay log {damage['segment']} is damaged at byte {damage['offset']}: "
                                          f"{damage['bytes']} bytes skipped, the transitions there are lost")
        if len(self.store.damage) > MAX_DAMAGE_EVENTS:
            self._event("replay_damaged", f"... and {len(self.store.damage) - MAX_DAMAGE_EVENTS} more damaged stretches")
        self.checkpoint_path = checkpoint_path

        self.stop_requested = threading.Event()
        self.io_failed = False
        self.paused = threading.Event()
        self.data_arrived = threading.Event()
        self.outbox: queue.Queue = queue.Queue()  # ("publish", frame) or ("reply", envelope, frame), for the I/O thread
        self.checkpoint_requests: queue.Queue = queue.Queue()  # envelopes waiting for "checkpoint" replies
        self.weight_version = 0
        self.sessions: dict[str, dict] = {}  # session -> sender, CURVE key, transitions, last_seen
        self.unacked: collections.deque = collections.deque()  # (store.appended mark, envelope, session, seq), in order
        self.buckets: dict[str, TokenBucket] = {}  # session -> its ingest budget
        rate = settings.max_total_ingest_rate
        self.total_bucket = None if rate is None else self._new_bucket(rate)
        self.update_rate = self.ingest_rate = 0.0
        self.skipped_updates = self.nonfinite_in_a_row = 0

    @staticmethod
    def _saved_state(run: RunDir) -> tuple[tuple[dict, Path] | None, list[tuple[Path, str]]]:
        """The newest checkpoint of the run that reads back whole: learner.pt, else the history's, newest
        first; and the ones that did not. None for a new run; a ConfigError when none reads."""
        from robot_sql import checkpoint_history

        folder = checkpoint_history.history_folder(run.checkpoints)
        candidates = [run.checkpoints / "learner.pt"]
        candidates += [folder / entry["name"] for entry in reversed(checkpoint_history.read_index(folder))]
        unreadable = []
        for path in filter(Path.exists, candidates):
            try:
                state = load_checkpoint(path)
                SQLConfig(**state["agent"]["config"])  # the part read before any tensor is used
                return (state, path), unreadable
            except CHECKPOINT_READ_ERRORS as error:
                log.error("checkpoint %s cannot be read: %s", path, error)
                unreadable.append((path, str(error)))
        if unreadable:
            raise ConfigError(f"no checkpoint of {run.root} can be read ({unreadable[0][1]}); "
                              f"move {run.checkpoints} aside to start the run's training afresh")
        return None, unreadable

    def _check_data(self, message) -> None:
        """The learner's own checks of a data frame (a ProtocolError refuses it, counted and answered)."""
        body, settings = message.body, self.settings
        known = self.sessions.get(body["session"])
        if known is not None and known["key"] != message.peer_key:  # with CURVE: a session is its first key's
            raise ProtocolError("unauthorized", f"session {session_tag(body['session'])} belongs to another CURVE key")
        if message.type == "transitions":
            rows = check_transitions(body, self.store.obs_dim, self.store.act_dim, settings.max_batch_transitions,
                                     settings.max_abs_value)
            if self.store.contains(body["session"], body["seq"]):
                return  # a resend of what is stored: acknowledged again, whatever the budgets
            if settings.max_replay_bytes is not None and self.store.log_bytes >= settings.max_replay_bytes:
                raise ProtocolError("disk_budget", f"the replay log has reached max_replay_bytes={settings.max_replay_bytes}")
            # per session, not per sender name: a name is self-declared, a session id is a secret, so no peer
            # can spend another's budget; many made-up sessions together still meet the overall bucket
            if settings.max_ingest_rate is not None and not self._bucket(body["session"]).take(rows):
                raise ProtocolError("rate_limited", f"{message.sender[:64]} (session {session_tag(body['session'])}) "
                                                    f"sends more than max_ingest_rate={settings.max_ingest_rate:g} "
                                                    "transitions/s")
            if self.total_bucket is not None and not self.total_bucket.take(rows):
                raise ProtocolError("rate_limited", "all senders together send more than "
                                                    f"max_total_ingest_rate={settings.max_total_ingest_rate:g} transitions/s")
        elif message.type == "stats":
            if message.sender.startswith(SOURCE):  # self.sender too: peers cannot write the learner's curves
                raise ProtocolError("forged", f"stats from {message.sender[:64]!r}: names beginning with "
                                              f"{SOURCE!r} are the learner's")
            unknown = sorted(set(body["values"]) - STATS_NAMES)
            if unknown:
                raise ProtocolError("unknown_metric", f"{len(unknown)} unknown names, e.g. {unknown[0][:64]!r}")

    def _bucket(self, session: str) -> TokenBucket:
        bucket = self.buckets.get(session)
        if bucket is None:
            make_room(self.buckets, lambda known: known.last)  # made-up sessions cannot grow the table
            bucket = self.buckets[session] = self._new_bucket(self.settings.max_ingest_rate)
        return bucket

    def _new_bucket(self, rate: float) -> TokenBucket:
        return TokenBucket(rate, max(rate, self.settings.max_batch_transitions))  # a second's worth, at least a batch

    def _bind(self, kind: int, offset: int, name: str, accept: set[str], check=None, max_entries: int | None = None):
        socket = self.context.socket(kind)
        socket.linger = 0
        socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.settings.max_frame_bytes)  # larger frames are cut at the transport
        try:
            secure_server(socket, self.settings.curve_secret_key)
        except ValueError as error:  # a key file without the keys it should hold
            raise ConfigError(f"curve_secret_key: {error}") from error
        address = f"tcp://{self.settings.host}:{self.settings.port + offset}"
        try:
            socket.bind(address)
        except zmq.ZMQError as error:
            raise ConfigError(f"cannot bind the {name} socket to {address}: {error}") from error
        if kind == zmq.XPUB:
            return socket
        return RouterEndpoint(socket, name, self.sender, accept, self.settings.max_frame_bytes, check, max_entries)

    # ---- I/O thread -------------------------------------------------------------------------------
    def serve(self) -> None:
        try:
            self._serve()
        except Exception:  # without its I/O the learner is useless: stop the whole process, loudly
            log.exception("the learner's I/O thread failed")
            self.io_failed = True
            self.stop_requested.set()

    def _serve(self) -> None:
        poller = zmq.Poller()
        for socket in (self.data.socket, self.weights_socket, self.control.socket, self.store.durable_signal):
            poller.register(socket, zmq.POLLIN)
        latest_weights = None
        while not self.stop_requested.is_set():
            ready = dict(poller.poll(5))
            if self.data.socket in ready:
                self._receive_data()
            if self.store.durable_signal in ready:
                os.eventfd_read(self.store.durable_signal)
                if self.store.failure is not None:
                    raise RuntimeError("the replay store cannot fsync") from self.store.failure
                self._acknowledge_durable()
            if self.weights_socket in ready and self._receive_subscriptions() and latest_weights is not None:
                self.weights_socket.send(latest_weights, zmq.NOBLOCK)
            if self.control.socket in ready:
                self._receive_control()
            while not self.outbox.empty():
                item = self.outbox.get_nowait()
                if item[0] == "publish":
                    latest_weights = item[1]
                    self.weights_socket.send(latest_weights, zmq.NOBLOCK)  # PUB never blocks: slow subscribers drop
                else:
                    self.control.send(item[1], item[2])

    def _receive_data(self) -> None:
        stored = 0
        for _ in range(DRAIN_FRAMES):
            received = self.data.receive()
            if received is None:
                break
            envelope, message, frame = received
            session = message.body["session"]
            info = self.sessions.get(session)
            if info is None:
                make_room(self.sessions, lambda known: known["last_seen"])  # a flood of made-up sessions cannot grow it
                info = self.sessions[session] = {"sender": message.sender, "key": message.peer_key, "transitions": 0,
                                                 "last_seen": 0.0}
            now = time.time()
            if now - info["last_seen"] > ACTOR_SILENT_S:
                self._event("actor", f"actor {message.sender} (session {session_tag(session)}) connected")
            info["last_seen"] = now
            if message.type == "transitions":
                rows = self.store.append(message, frame)
                info["transitions"] += rows
                stored += rows
                # a duplicate too is acknowledged only once its first copy is surely durable
                self.unacked.append((self.store.appended, envelope, session, message.body["seq"]))
            elif message.type == "ping":
                self.data.send(envelope, encode("pong", self.sender, weight_version=self.weight_version))
            else:  # stats
                self.metrics.log(message.sender, self.agent.updates, message.body["values"])
        self.store.flush()
        self._acknowledge_durable()
        if stored:
            self.data_arrived.set()

    def _acknowledge_durable(self) -> None:
        """Acknowledge every batch the store's fsyncs cover: acknowledged means durable."""
        acks: dict[tuple[bytes, str], tuple[list[bytes], list[int]]] = {}  # (peer, session) -> envelope, seqs
        while self.unacked and self.unacked[0][0] <= self.store.durable:
            _, envelope, session, seq = self.unacked.popleft()
            acks.setdefault((envelope[0], session), (envelope, []))[1].append(seq)
        for (_, session), (envelope, seqs) in acks.items():
            self.data.send(envelope, encode("ack", self.sender, session=session, seqs=seqs))

    def _receive_subscriptions(self) -> bool:
        """Count what arrives on the weights socket; True if someone (re)subscribed."""
        subscribed = False
        while True:
            try:
                frame = self.weights_socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return subscribed
            if frame[:1] in (b"\x00", b"\x01"):  # XPUB (un)subscription: the only thing a subscriber sends
                self.weights_counter.accepted += 1
                subscribed |= frame[:1] == b"\x01"
            else:
                self.weights_counter.reject(ProtocolError("unexpected", "the weights socket only publishes"))

    def _receive_control(self) -> None:
        while (received := self.control.receive()) is not None:
            envelope, message, _ = received
            command = message.body["command"]
            if command == "status":
                result = self.status()
            elif command == "pause":
                self.paused.set()
                self._event("pause", "training paused by request")
                result = {"paused": True}
            elif command == "resume":
                self.paused.clear()
                self._event("resume", "training resumed by request")
                result = {"paused": False}
            elif command == "checkpoint":
                self.checkpoint_requests.put(envelope)  # answered once written
                continue
            elif command == "stop":
                self._event("stop", "stop requested over the control channel")
                self.stop_requested.set()
                result = {"stopping": True}
            else:
                self.control.send(envelope, encode("error", self.sender, kind="unknown_command",
                                                   detail="commands: status, pause, resume, checkpoint, stop"))
                continue
            self.control.send(envelope, encode("reply", self.sender, result=result))

    def status(self) -> dict:
        now = time.time()
        return {
            "state": "stopping" if self.stop_requested.is_set() else "paused" if self.paused.is_set() else "running",
            "device": str(self.agent.device),
            "updates": self.agent.updates,
            "weight_version": self.weight_version,
            "transitions_total": self.store.transitions_total,
            "replay_size": len(self.store),
            "replay_bytes": self.store.log_bytes,
            "replay_skipped": self.store.skipped,
            "replay_damaged_bytes": sum(damage["bytes"] for damage in self.store.damage),
            "replay_damaged_stretches": len(self.store.damage),
            "skipped_updates": self.skipped_updates,
            "update_rate": self.update_rate,
            "ingest_rate": self.ingest_rate,
            "actors": {session_tag(session): {"sender": info["sender"], "transitions": info["transitions"],
                                              "seconds_since_seen": round(now - info["last_seen"], 3)}
                       for session, info in self.sessions.items()},
            "received": {c.socket_name: c.received for c in self.counters()},
            "rejected": {c.socket_name: {k: n for k, n in c.rejected.items() if n} for c in self.counters()},
        }

    def counters(self) -> list[RejectCounter]:
        return [self.data.counter, self.weights_counter, self.control.counter]

    # ---- training thread ----------------------------------------------------------------------------
    def run(self) -> None:
        self.publish()  # before the I/O thread answers anyone: status never shows a resumed run at version 0
        io_thread = threading.Thread(target=self.serve, name="learner-io", daemon=True)
        io_thread.start()
        self._event("start", f"learner up on {self.settings.host}:{self.settings.port} "
                             f"(device {self.agent.device}, {self.store.transitions_total} stored transitions, "
                             f"{self.agent.updates} updates)")
        settings = self.settings
        last_checkpoint = last_log = time.monotonic()
        updates_at_log, transitions_at_log = self.agent.updates, self.store.transitions_total
        losses: dict[str, list[float]] = {}
        while not self.stop_requested.is_set():
            allowed = self.utd_ratio * (self.store.transitions_total - settings.min_replay + 1)
            if self.paused.is_set() or len(self.store) < settings.min_replay or self.agent.updates >= allowed:
                self.data_arrived.wait(0.01)
                self.data_arrived.clear()
            else:
                metrics = self.agent.update(self.store.sample(self.agent.config.batch_size, self.rng))
                if not all(map(math.isfinite, metrics.values())):
                    self._skipped_update()
                else:
                    self.nonfinite_in_a_row = 0
                    for name, value in metrics.items():
                        losses.setdefault(name, []).append(value)
                    if self.agent.updates % settings.publish_every == 0:
                        self.publish()
                    if settings.max_updates and self.agent.updates >= settings.max_updates:
                        self._event("stop", f"reached max_updates={settings.max_updates}")
                        self.stop_requested.set()
            now = time.monotonic()
            while not self.checkpoint_requests.empty():
                envelope = self.checkpoint_requests.get_nowait()
                self.checkpoint()
                last_checkpoint = now
                self.outbox.put(("reply", envelope, encode("reply", self.sender, result={
                    "path": str(self.checkpoint_path), "updates": self.agent.updates})))
            if now - last_checkpoint >= settings.checkpoint_every_s:
                self.checkpoint()
                last_checkpoint = now
            if now - last_log >= settings.log_every_s:
                elapsed = now - last_log
                self.update_rate = (self.agent.updates - updates_at_log) / elapsed
                self.ingest_rate = (self.store.transitions_total - transitions_at_log) / elapsed
                self._log_metrics({name: float(np.mean(values)) for name, values in losses.items()})
                self._note_silent_actors()
                losses.clear()
                last_log, updates_at_log, transitions_at_log = now, self.agent.updates, self.store.transitions_total
        io_thread.join(timeout=5)
        self.checkpoint()
        self.store.close()
        self._event("stopped", f"stopped at {self.agent.updates} updates, weight version {self.weight_version}")
        self.close()
        if self.io_failed:
            raise SystemExit(1)

    def _skipped_update(self) -> None:
        """An update skipped for a non-finite loss or gradient (parameters unchanged); too many in a row pause training."""
        if self.skipped_updates == 0:
            log.warning("an update had a non-finite loss or gradient and was skipped; further ones are counted "
                        "(skipped_updates)")
        self.skipped_updates += 1
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= MAX_NONFINITE_UPDATES:
            self.nonfinite_in_a_row = 0
            self.paused.set()
            self._event("pause", f"training paused: {MAX_NONFINITE_UPDATES} updates in a row had a non-finite loss "
                                 f"or gradient ({self.skipped_updates} skipped in all); check the data and the SQL "
                                 "settings, then resume")

    def publish(self) -> None:
        version = self.versions.next()
        frame = encode("weights", self.sender, run=self.versions.run, version=version,
                       hidden_sizes=list(self.agent.config.hidden_sizes),
                       weights=self.agent.policy_weights())
        self.weight_version = version
        self.outbox.put(("publish", frame))

    def checkpoint(self) -> None:
        """learner.pt (what a restart resumes from), and a copy in the bounded history (robot_sql.checkpoint_history)."""
        from robot_sql import checkpoint_history

        buffer = io.BytesIO()
        torch.save({"agent": self.agent.state_dict(), "sample_rng": json.dumps(self.rng.bit_generator.state)}, buffer)
        atomic_write_bytes(self.checkpoint_path, buffer.getvalue())
        kept = checkpoint_history.record(self.checkpoint_path.parent, buffer.getvalue(), self.agent.updates,
                                         self.settings.checkpoint_history, self.settings.env)
        self._event("checkpoint", f"checkpoint at {self.agent.updates} updates -> {self.checkpoint_path}"
                                  + (f" (kept as history/{kept.name})" if kept else ""))

    def _note_silent_actors(self) -> None:
        now = time.time()
        for session, info in list(self.sessions.items()):
            if not info.get("silent") and now - info["last_seen"] > ACTOR_SILENT_S:
                self._event("actor", f"actor {info['sender']} (session {session_tag(session)}) silent for {ACTOR_SILENT_S:.0f} s")
            info["silent"] = now - info["last_seen"] > ACTOR_SILENT_S

    def _log_metrics(self, losses: dict[str, float]) -> None:
        values = {
            "updates": self.agent.updates,
            "update_rate": self.update_rate,
            "ingest_rate": self.ingest_rate,
            "transitions_total": self.store.transitions_total,
            "replay_size": len(self.store),
            "weight_version": self.weight_version,
            "skipped_updates": self.skipped_updates,
            "actors_seen": sum(time.time() - info["last_seen"] < ACTOR_SILENT_S for info in self.sessions.values()),
            **losses,
        }
        for counter in self.counters():
            values.update({f"rejected_{counter.socket_name}_{kind}": n for kind, n in counter.rejected.items() if n})
            values[f"received_{counter.socket_name}"] = counter.received
        self.metrics.log(SOURCE, self.agent.updates, values)

    def _event(self, kind: str, message: str) -> None:
        log.info(message)
        self.metrics.event(SOURCE, kind, message)

    def close(self) -> None:
        self._close_sockets()
        self.metrics.close()

    def _close_sockets(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)


def check_device(device: str) -> None:
    """A GPU asked for by name must be there: torch would fail only at the first update."""
    if device.startswith("cuda"):
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device {device!r}: torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                              f"(torch.cuda.is_available() is {torch.cuda.is_available()}); use auto or cpu")


@click.command("learner")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Run directory (created, or resumed if it exists).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with LearnerSettings.")
@click.option("--port", type=int, help="Data port (weights on PORT+1, control on PORT+2); overrides the config.")
@click.option("--init", type=click.Path(dir_okay=False), help="Agent checkpoint a new run starts from (robot-sql train's "
              "or compose's agent.pt); overrides the config. A run with a checkpoint of its own resumes from that instead.")
def learner_command(run_dir: str, config_file: str | None, port: int | None, init: str | None) -> None:
    """Receive transitions from actors, train soft Q-learning, publish weights."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    refuse_unknown_environment(LearnerSettings)
    settings = load_settings(LearnerSettings, config_file, port=port, init=init)
    check_device(settings.device)
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    try:
        run = RunDir.create(run_dir)
    except OSError as error:
        raise ConfigError(f"cannot create the run directory {run_dir}: {error.strerror or error}") from error
    try:
        run.lock("learner")  # before anything of the run is read or written
    except RunDirLocked as error:
        raise ConfigError(str(error)) from error
    dump_settings(settings, run.root / "learner.yaml")
    learner = Learner(run, settings)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: learner.stop_requested.set())
    learner.run()
