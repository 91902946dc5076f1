"""The actor service: runs the newest policy on an environment at the control rate and streams
transitions to the learner.

The control loop (`Actor.run`, the caller's thread) never touches a socket. Everything on
the network lives in `ActorLink`, a background thread: batching and sending transitions,
keeping the unacknowledged ones (bounded, counted) and resending them, heartbeats, the
weights subscription, and the actor's own control channel for the panel. The two sides
meet in queues and in one reference swap, so the loop keeps its rate whatever the network
does: learner absent at start-up, restarted, or silent.

Without a learner the actor runs on its last weights (or, with on_link_loss="hold", holds
the arm) and reconnects by itself. Any gymnasium env works; the ROS 2 node passes an env
backed by ROS topics. An env whose `unwrapped.robot` exists gets `robot.hold()` on e-stop.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import socket as _socket
import threading
import time
import uuid
from typing import Any

import click
import gymnasium
import numpy as np
import torch
import zmq

from robot_sql.config import ConfigError, load_settings, refuse_unknown_environment
from robot_sql.protocol import (ProtocolError, RejectCounter, RouterEndpoint, control_check, decode, encode,
                                secure_client, secure_server, session_tag, start_authenticator)
from robot_sql.replay import pack_transition
from robot_sql.rundir import TokenFileError, read_token
from robot_sql.safety import GuardedRobot, guard_sawyer
from robot_sql.service_settings import ActorSettings
from robot_sql.sql import Sampler
from robot_sql.train import check_box_spaces

log = logging.getLogger("robot_sql.actor")
CONTROL_COMMANDS = ("status", "estop", "rearm", "reset_episode", "perturb")
OPEN_COMMANDS = frozenset({"estop"})  # taken without the control token: stopping the arm never waits on a credential
WEIGHTS_QUEUE = 8  # weight frames queued for the network thread at most; it keeps only the newest


class ActorLink(threading.Thread):
    """The network side of one actor (a daemon thread; the only user of its sockets)."""

    def __init__(self, settings: ActorSettings, name: str, obs_dim: int, act_dim: int, status: callable):
        super().__init__(name=f"{name}-link", daemon=True)
        self.settings, self.name, self.obs_dim, self.act_dim, self.status = settings, name, obs_dim, act_dim, status
        # a restarted actor process starts new sequence numbers; 128 random bits, never shown (session_tag),
        # so no other sender can claim this session's numbers
        self.session = uuid.uuid4().hex
        self.outgoing: collections.deque = collections.deque()  # transitions from the loop (deque appends are atomic)
        self.stats_outbox: collections.deque = collections.deque(maxlen=100)
        self.commands: queue.Queue = queue.Queue()  # (command, args, envelope) for the loop
        self.replies: queue.Queue = queue.Queue()  # (envelope, frame) from the loop
        self.new_policy: tuple[str, int, Sampler] | None = None  # newest (run, version, policy), swapped in by the loop
        self.command_waiting = threading.Event()  # wakes a pacing loop early for e-stop
        self.estop_waiting = threading.Event()  # ends a perturbation test early
        self.stopping = threading.Event()
        self.seq = 0
        self.unacked: collections.OrderedDict[int, list] = collections.OrderedDict()  # seq -> [frame, rows, last sent]
        self.unacked_rows = self.dropped_rows = self.acked_rows = 0
        self.weight_version = 0
        self.learner_run: str | None = None  # a new run (another run directory) starts its versions again
        self.last_heard = -float("inf")
        self.errors = RejectCounter("learner-replies")  # bad frames from the learner's side
        self.refused: dict[str, int] = {}  # error replies from the learner, per kind
        self._open_sockets()

    def _open_sockets(self) -> None:
        """Made here, in the caller's thread, so a bad address is an error at start-up; used only by `run`."""
        self.context = zmq.Context()
        self.data_address, weights_address = self.settings.learner_addresses()
        keys = (self.settings.curve_secret_key, self.settings.curve_server_key)
        self.data = self.context.socket(zmq.DEALER)
        self.data.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards a learner that is not there: we keep the batches
        self.weights = self.context.socket(zmq.SUB)
        # Latest weights only, conflated here (see _receive_weights): libzmq's CONFLATE option now and then
        # left a published version unreadable (1 in about 1500 pushes in `bench transport`'s loop).
        self.weights.setsockopt(zmq.RCVHWM, WEIGHTS_QUEUE)
        for socket, address in ((self.data, self.data_address), (self.weights, weights_address)):
            socket.linger = 0
            socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)  # retry the learner at least once a second
            try:
                secure_client(socket, *keys)
            except ValueError as error:  # a key file without the keys it should hold
                self.context.destroy(linger=0)
                raise ConfigError(f"curve_secret_key / curve_server_key: {error}") from None
            socket.connect(address)  # returns at once; ZeroMQ connects (and reconnects) in the background
        self.weights.setsockopt(zmq.SUBSCRIBE, b"")
        self.control = self.authenticator = None
        if self.settings.control_bind:
            try:
                if self.settings.control_token_file is None:
                    raise TokenFileError("not given")
                token = read_token(self.settings.control_token_file)
            except TokenFileError as error:
                self.context.destroy(linger=0)
                raise ConfigError(
                    f"control_token_file: {error}. The control channel takes requests only with the run's token: give "
                    "control_token_file (<run-dir>/control.token, made by the learner at its first start), "
                    "or control_bind: '' for no control channel") from None
            socket = self.context.socket(zmq.ROUTER)
            socket.linger = 0
            if self.settings.curve_secret_key is not None:  # the panel's link is encrypted with the actor's own keys
                self.authenticator = start_authenticator(self.context, self.settings.curve_clients_dir)
                secure_server(socket, self.settings.curve_secret_key)
            try:
                socket.bind(self.settings.control_bind)
            except zmq.ZMQError as error:
                if self.authenticator is not None:
                    self.authenticator.stop()
                self.context.destroy(linger=0)
                raise ConfigError(f"cannot bind the actor control channel to {self.settings.control_bind}: {error}") from error
            self.control = RouterEndpoint(socket, "actor-control", self.name, {"request"},
                                          check=control_check(token, OPEN_COMMANDS))

    @property
    def connected(self) -> bool:
        return time.monotonic() - self.last_heard < self.settings.link_timeout_s

    def run(self) -> None:
        try:
            self._serve()
        except Exception:  # the loop sees this thread gone, holds the arm and stops
            log.exception("%s: the network thread failed", self.name)
        finally:
            if self.authenticator is not None:
                self.authenticator.stop()
            self.context.destroy(linger=0)

    def _serve(self) -> None:
        data, weights, control = self.data, self.weights, self.control
        poller = zmq.Poller()
        for socket in (data, weights, control.socket if control else None):
            if socket is not None:
                poller.register(socket, zmq.POLLIN)
        batch: list[np.ndarray] = []
        batch_started = last_ping = 0.0
        was_connected = False
        while not self.stopping.is_set():
            ready = dict(poller.poll(5))
            now = time.monotonic()
            if data in ready:
                self._receive_replies(data)
            if weights in ready:
                self._receive_weights(weights)
            if control is not None and control.socket in ready:
                self._receive_control(control)
            while not self.replies.empty():
                control.send(*self.replies.get_nowait())
            if self.connected != was_connected:
                was_connected = self.connected
                if was_connected:  # (re)connected: resend everything unacknowledged right away
                    log.info("%s: connected to the learner at %s", self.name, self.data_address)
                    for entry in self.unacked.values():
                        entry[2] = -float("inf")
                else:
                    log.warning("%s: lost the learner; going on with weight version %d", self.name, self.weight_version)
            while self.outgoing:
                if not batch:
                    batch_started = now
                batch.append(self.outgoing.popleft())
                if len(batch) >= self.settings.max_batch_transitions:
                    self._seal(batch)
                    batch = []
            if batch and now - batch_started >= self.settings.send_every_s:
                self._seal(batch)
                batch = []
            self._send_unacked(data, now)
            if now - last_ping >= self.settings.heartbeat_s:
                last_ping = now
                self._try_send(data, encode("ping", self.name, session=self.session))
            while self.stats_outbox:
                self._try_send(data, encode("stats", self.name, session=self.session, values=self.stats_outbox.popleft()))

    def _try_send(self, socket: zmq.Socket, frame: bytes) -> bool:
        try:
            socket.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected, or the pipe is full: keep it for later
            return False

    def _seal(self, batch: list[np.ndarray]) -> None:
        """Number a batch of transition rows and keep it until acknowledged; drop the oldest beyond the bound."""
        self.seq += 1
        frame = encode("transitions", self.name, session=self.session, seq=self.seq, obs_dim=self.obs_dim,
                       act_dim=self.act_dim, rows=np.stack(batch))
        self.unacked[self.seq] = [frame, len(batch), -float("inf")]
        self.unacked_rows += len(batch)
        while self.unacked_rows > self.settings.max_unacked_transitions:
            _, (_, rows, _) = self.unacked.popitem(last=False)
            self.unacked_rows -= rows
            if self.dropped_rows == 0:
                log.warning("%s: more than %d transitions unacknowledged; dropping the oldest",
                            self.name, self.settings.max_unacked_transitions)
            self.dropped_rows += rows

    def _send_unacked(self, socket: zmq.Socket, now: float) -> None:
        for entry in self.unacked.values():
            if now - entry[2] >= self.settings.resend_after_s:
                if not self._try_send(socket, entry[0]):
                    return
                entry[2] = now

    def _receive_replies(self, socket: zmq.Socket) -> None:
        while True:
            try:
                frame = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode(frame, {"ack", "pong", "error"})
            except ProtocolError as error:
                self.errors.reject(error)
                continue
            self.last_heard = time.monotonic()
            if message.type == "ack" and message.body["session"] == self.session:
                for seq in message.body["seqs"]:
                    entry = self.unacked.pop(seq, None)
                    if entry is not None:
                        self.unacked_rows -= entry[1]
                        self.acked_rows += entry[1]
            elif message.type == "error":  # e.g. transitions of the wrong size: another env than the learner's
                kind = message.body["kind"]
                if kind not in self.refused:
                    log.warning("%s: the learner refused a message (%s: %s); further refusals of this kind are only counted",
                                self.name, kind, message.body["detail"])
                self.refused[kind] = self.refused.get(kind, 0) + 1

    def _receive_weights(self, socket: zmq.Socket) -> None:
        frame = None
        while True:  # everything queued, keeping the newest
            try:
                frame = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        if frame is None:
            return
        try:
            message = decode(frame, {"weights"})
            run, version = message.body["run"], message.body["version"]
            if run == self.learner_run and version <= self.weight_version:
                self.last_heard = time.monotonic()
                return
            policy = Sampler(self.obs_dim, self.act_dim, tuple(message.body["hidden_sizes"]))
            try:
                policy.load_weights(message.body["weights"])
            except ValueError as error:
                raise ProtocolError("shape", str(error)) from None
        except ProtocolError as error:
            self.errors.reject(error)
            return
        self.last_heard = time.monotonic()
        if run != self.learner_run:
            log.info("%s: weights from learner run %s", self.name, run)
        self.learner_run, self.weight_version = run, version
        self.new_policy = (run, version, policy)

    def _receive_control(self, control: RouterEndpoint) -> None:
        while (received := control.receive()) is not None:
            envelope, message, _ = received
            command = message.body["command"]
            if command == "status":
                control.send(envelope, encode("reply", self.name, result=self.status(message.body["args"].get("unacked_seqs") is True)))
            elif command in CONTROL_COMMANDS:
                self.enqueue(command, message.body["args"], envelope)
            else:
                control.send(envelope, encode("error", self.name, kind="unknown_command",
                                              detail=f"commands: {', '.join(CONTROL_COMMANDS)}"))

    def enqueue(self, command: str, args: dict, envelope: list[bytes] | None = None) -> None:
        """Hand a command to the loop, which owns the env and runs it between steps (answers `envelope` if given)."""
        if command == "estop":
            self.estop_waiting.set()
        self.commands.put((command, args, envelope))
        self.command_waiting.set()

    def reply(self, envelope: list[bytes] | None, result: dict | None = None, error: tuple[str, str] | None = None) -> None:
        if not envelope or self.control is None:  # a command from inside the process: nobody to answer
            return
        frame = (encode("error", self.name, kind=error[0], detail=error[1][:200]) if error
                 else encode("reply", self.name, result=result))
        self.replies.put((envelope, frame))


class Actor:
    """The control loop over a gymnasium env; reusable outside the CLI (the ROS 2 node runs it).

    The env takes SQL actions in [-1, 1]^D and gives flat Box observations, as for the learner.
    """

    def __init__(self, env: gymnasium.Env, settings: ActorSettings):
        check_box_spaces(env, settings.env)
        self.env, self.settings = env, settings
        robot = getattr(env.unwrapped, "robot", None)
        if robot is not None and not isinstance(robot, GuardedRobot):  # a Sawyer env: every command passes the filter
            env.unwrapped.robot = guard_sawyer(robot)
        self.name = settings.name or f"actor-{_socket.gethostname()}-{os.getpid()}"
        self.obs_dim = gymnasium.spaces.flatdim(env.observation_space)
        self.act_dim = gymnasium.spaces.flatdim(env.action_space)
        torch.manual_seed(settings.seed)
        self.policy = Sampler(self.obs_dim, self.act_dim)  # random, until the learner's weights arrive
        self.policy_version = 0
        self.applied_policy: tuple | None = None
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.link = ActorLink(settings, self.name, self.obs_dim, self.act_dim, self.status)
        self.estopped = False
        self.holding = False
        self.perturbing = False
        self.steps = self.episodes = 0
        self.arm_state: dict[str, Any] = {}  # replaced whole after each step: the link thread reads it
        self.episode_return, self.episode_length = 0.0, 0
        self.periods: collections.deque = collections.deque(maxlen=1000)
        self.period_max = 0.0
        self.recent_returns: collections.deque = collections.deque(maxlen=20)
        self.recent_successes: collections.deque = collections.deque(maxlen=20)
        self.observation = None

    # ---- the control loop ------------------------------------------------------------------------
    def run(self) -> None:
        self.link.start()
        self._reset()
        period = 1.0 / self.settings.control_rate_hz
        next_tick = last_start = time.monotonic()
        last_stats, steps_at_stats = last_start, 0
        while not self.link.stopping.is_set():
            if not self.link.is_alive():  # no e-stop channel any more: hold the arm and give up, loudly
                self._hold()
                raise RuntimeError(f"{self.name}: the network thread died; holding the arm and stopping")
            start = time.monotonic()
            if self.steps > 0:
                self.periods.append(start - last_start)
                self.period_max = max(self.period_max, start - last_start)
            last_start = start
            self._run_commands()
            newest = self.link.new_policy  # one read: the link thread may replace it at any time
            if newest is not self.applied_policy:  # swap weights between control steps
                self.applied_policy = newest
                _, self.policy_version, self.policy = newest
            hold = self.estopped or (self.settings.on_link_loss == "hold" and not self.link.connected)
            if hold:
                self._hold()
            else:
                self.holding = False
                self._step()
            if start - last_stats >= self.settings.stats_every_s:
                self._send_stats(self.steps - steps_at_stats, start - last_stats)
                last_stats, steps_at_stats = start, self.steps
            if self.settings.max_steps is not None and self.steps >= self.settings.max_steps:
                break
            if self.settings.paced or hold:
                next_tick = max(next_tick + period, time.monotonic())
                if self.link.command_waiting.wait(max(0.0, next_tick - time.monotonic())):
                    next_tick = time.monotonic()
        self.stop()

    def _step(self) -> None:
        action = self.policy.act(self.observation, generator=self.generator)
        next_observation, reward, terminated, truncated, info = self.env.step(action)
        next_observation = np.asarray(next_observation, dtype=np.float32).ravel()
        self.link.outgoing.append(pack_transition(self.observation, action, float(reward), next_observation, terminated))
        self.steps += 1
        self.episode_return += float(reward)
        self.episode_length += 1
        self.observation = next_observation
        self.arm_state = self._arm_state(info)
        if terminated or truncated:
            self.recent_returns.append(self.episode_return)
            self.recent_successes.append(float(bool(info.get("is_success", False))))
            episode = {"episode_return": self.episode_return, "episode_length": self.episode_length,
                       "episode_success": self.recent_successes[-1]}
            if "collision_steps" in info:  # the obstacle tasks count the steps that touched the obstacle
                episode["episode_collision_steps"] = int(info["collision_steps"])
            self.link.stats_outbox.append(episode)
            self.episodes += 1
            self._reset()

    def _reset(self) -> None:
        observation, _ = self.env.reset(seed=self.settings.seed + self.episodes)
        self.observation = np.asarray(observation, dtype=np.float32).ravel()
        self.episode_return, self.episode_length = 0.0, 0

    def _hold(self) -> None:
        robot = getattr(self.env.unwrapped, "robot", None)
        if robot is not None:
            robot.hold()
        if not self.holding:
            log.warning("%s: holding (%s)", self.name, "e-stop" if self.estopped else "no learner")
        self.holding = True

    def _run_commands(self) -> None:
        self.link.command_waiting.clear()
        while not self.link.commands.empty():
            command, args, envelope = self.link.commands.get_nowait()
            if command == "estop":
                self.link.estop_waiting.clear()
                self.estopped = True
                self._hold()
                self.link.reply(envelope, {"estopped": True})
            elif command == "rearm":
                self.estopped = False
                self._reset()  # the world moved while holding: start a fresh episode
                self.link.reply(envelope, {"estopped": False})
            elif command == "reset_episode":
                self._reset()
                self.link.reply(envelope, {"episodes": self.episodes})
            elif command == "perturb":
                self._perturb(args, envelope)

    def _perturb(self, spec: dict, envelope: list[bytes]) -> None:
        """Perturbation trials (robot_sql.perturbation) in place of training steps; an e-stop ends them."""
        if self.estopped:
            self.link.reply(envelope, error=("estopped", "rearm before a perturbation test"))
            return
        from robot_sql.perturbation import PerturbationAborted, run_trials

        self.perturbing = True
        log.info("%s: perturbation test %s", self.name, spec)
        try:
            report = run_trials(self.env, self.act, spec, reseed=self.generator.manual_seed, abort=self.link.estop_waiting.is_set)
        except PerturbationAborted as error:  # an e-stop: its own kind, so that callers need not read the text
            log.warning("%s: perturbation test aborted: %s", self.name, error)
            self.link.reply(envelope, error=("perturb_aborted", f"{type(error).__name__}: {error}"))
        except Exception as error:  # a bad spec or a failed trial is the caller's answer, not our crash
            log.warning("%s: perturbation test failed: %s", self.name, error)
            self.link.reply(envelope, error=("perturb_failed", f"{type(error).__name__}: {error}"))
        else:
            self.link.reply(envelope, report)
        finally:
            self.perturbing = False
        self._reset()

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The current policy as a function obs -> env action (for evaluation and perturbation trials)."""
        return self.policy.act(np.asarray(observation, dtype=np.float32).ravel(), generator=self.generator)

    def _send_stats(self, steps: int, elapsed: float) -> None:
        periods = np.asarray(list(self.periods) or [0.0])
        self.link.stats_outbox.append({
            "actor_steps_per_s": steps / elapsed, "actor_loop_period_max_ms": 1000 * float(periods.max()),
            "actor_loop_period_mean_ms": 1000 * float(periods.mean()), "actor_unacked": self.link.unacked_rows,
            "actor_dropped": self.link.dropped_rows, "actor_weight_version": self.policy_version,
        })

    def status(self, unacked_seqs: bool = False) -> dict[str, Any]:
        """Called from the link thread: reads plain attributes only. `unacked_seqs` lists every unacknowledged seq."""
        periods = np.asarray(list(self.periods) or [0.0])  # list() copies the deque atomically under the GIL
        link = self.link
        return {
            "name": self.name, "session_tag": session_tag(link.session), "connected": link.connected,
            "weight_version": self.policy_version, "estopped": self.estopped, "holding": self.holding,
            "perturbing": self.perturbing,
            "steps": self.steps, "episodes": self.episodes,
            "unacked_transitions": link.unacked_rows, "acked_transitions": link.acked_rows,
            "dropped_transitions": link.dropped_rows, "last_seq": link.seq,
            **({"unacked_seqs": list(link.unacked)} if unacked_seqs else {}),
            "loop_period": {"mean_s": float(periods.mean()), "p99_s": float(np.quantile(periods, 0.99)),
                            "max_s": float(periods.max()), "max_since_start_s": self.period_max},
            "recent_return": float(np.mean(list(self.recent_returns))) if self.recent_returns else None,
            "recent_success": float(np.mean(list(self.recent_successes))) if self.recent_successes else None,
            "learner_errors": {k: n for k, n in link.errors.rejected.items() if n},
            "refused_by_learner": dict(link.refused),
            **self.arm_state,
        }

    def _arm_state(self, info: dict) -> dict[str, Any]:
        """What the panel shows of the arm: joints, target and hand error (envs with a robot only)."""
        robot = getattr(self.env.unwrapped, "robot", None)
        if robot is None:
            return {}
        env = self.env.unwrapped
        state: dict[str, Any] = {"joint_positions": [float(q) for q in robot.joint_positions()]}
        if isinstance(getattr(env, "scene", None), str):  # which MuJoCo scene the panel draws (sim/scenes.py)
            state["scene"] = env.scene
        target = getattr(env, "target", None)
        if target is not None:  # the episode's target pose (m, base frame; quaternion w, x, y, z)
            state["target_position"] = [float(v) for v in target[0]]
            state["target_quat"] = [float(v) for v in target[1]]
        brick = getattr(env, "fixed_brick", None)
        if brick is not None:  # the Lego tasks: where this episode put the fixed brick
            state["fixed_brick_position"] = [float(v) for v in brick[0]]
            state["fixed_brick_quat"] = [float(v) for v in brick[1]]
        if "position_error" in info:
            state["position_error"] = float(info["position_error"])
        return state

    def request(self, command: str, **args: Any) -> None:
        """A control command from inside the process (e.g. the ROS node's e-stop topic); no reply."""
        if command not in CONTROL_COMMANDS:
            raise ValueError(f"unknown command {command!r}; commands: {', '.join(CONTROL_COMMANDS)}")
        self.link.enqueue(command, args)

    def stop(self) -> None:
        self.link.stopping.set()
        if self.link.is_alive():
            self.link.join(timeout=5)


@click.command("actor")
@click.option("--learner", help="HOST:PORT of the learner's data socket (weights on PORT+1).")
@click.option("--env", "env_id", help="gymnasium environment id, e.g. MultiGoal-v0 or SawyerReach-v0.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with ActorSettings.")
@click.option("--name", help="Actor id shown by the learner and the panel.")
@click.option("--control-bind", help="Endpoint of this actor's control channel, e.g. tcp://127.0.0.1:5560.")
@click.option("--control-token-file", help="The run's control.token, which the panel's requests carry.")
def actor_command(learner: str | None, env_id: str | None, config_file: str | None, name: str | None,
                  control_bind: str | None, control_token_file: str | None) -> None:
    """Run the policy on an environment at the control rate and stream transitions to the learner."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    refuse_unknown_environment(ActorSettings, other_prefixes=("ROBOT_SQL_ACTOR_NODE_",))  # the ROS node's own
    settings = load_settings(ActorSettings, config_file, learner=learner, env=env_id, name=name, control_bind=control_bind,
                             control_token_file=control_token_file)
    torch.set_num_threads(1)  # a small policy: threads only cost latency
    import robot_sql  # noqa: F401  (registers our environments)

    try:
        env = gymnasium.make(settings.env)
    except Exception as error:
        raise ConfigError(f"cannot make environment {settings.env!r}: {error}") from error
    actor = Actor(env, settings)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: actor.link.stopping.set())
    log.info("%s: starting on %s, learner %s, control %s", actor.name, settings.env, settings.learner,
             settings.control_bind or "off")
    actor.run()
    log.info("%s: stopped after %d steps (%d unacknowledged transitions left)", actor.name, actor.steps, actor.link.unacked_rows)
    env.close()
