"""`robot-sql dry-run`: the whole service on a simulated Sawyer, on loopback, in one command.

    robot-sql dry-run [--run-dir runs/<id>] [--actors N] [--ros] [--port 5555] [--panel-port 8765] [--duration S]

Every part is a real `robot-sql` command, started as a child process in its own process group
with its output in <run-dir>/logs/<name>.log:

    learner                 SawyerLegoStack-v0; data on PORT, weights PORT+1, control PORT+2
    actor-<i>               the in-process MuJoCo Sawyer (the fast path), control on PORT+5+i
      or, with --ros:
    sim-robot-<i>           the MuJoCo Sawyer behind Intera's ROS 2 topics, on ROS domain D+i
    actor-node-<i>          the ROS 2 actor node on that domain, control on PORT+5+i
    panel                   http://127.0.0.1:PANEL_PORT/, token in <run-dir>/panel.token

Settings: robot_sql/configs/{learner,actor}.yaml (the ROS node: ros_ws's sim.yaml), under
the usual ROBOT_SQL_* environment variables, which the children inherit. A new run directory
is made under runs/ unless --run-dir names one; an existing one resumes (replay, checkpoint,
weight versions, token).

Supervision: the dry run restarts what dies instead of tearing down; only Ctrl-C, SIGTERM or
--duration stops everything.
  - A child that dies (kill -9 or another signal, or a non-zero exit status) is restarted after
    1, 2, 4, 8, 16, then 30 s (the backoff starts again once a child has run for 60 s), each
    restart said on one line: `learner died (signal SIGKILL) after 312 s; restarting it in 1 s
    (attempt 1)`, then the end of its log for an exit status. Whatever the dead child left in its
    process group is killed first.
  - Exit status 0, or an end by SIGTERM or SIGINT, is a stop on purpose and is not restarted: a
    learner stopped by the panel's Stop (or a control `stop`), a child sent `kill PID` by hand.
    The panel's Start then starts a learner of its own for the run, outside the dry run's
    children.
  - One learner per run: it holds learner.lock (a second one exits 2 naming the holder). A
    restart waits until no process of the dead learner is left, and stands aside, for good, if
    another learner (the panel's Start) already serves the run.
  - Actors ride through a learner's restart: they keep their unacknowledged transitions (up to
    max_unacked_transitions) and resend them to the new learner, and meanwhile run on their last
    weights or hold the arm (actor.yaml's on_link_loss, ROBOT_SQL_ACTOR_ON_LINK_LOSS). A killed
    actor loses only its own unacknowledged transitions (those in memory); the panel's token
    stays in panel.token, so its link keeps working after a restart.
  - A child whose restarts keep dying, 9 in a row each within 60 s of its start (about 2.5
    minutes with the backoff), is given up: one line with the end of its log, a reminder in every
    status line, and exit status 1 at the end; the rest runs on.
Ctrl-C or SIGTERM stops the children (panel and actors first, the learner last so that it
checkpoints), each with SIGTERM to its group, then SIGKILL after a grace period; a second Ctrl-C
kills at once. A learner that the panel's Start launched is stopped the same way. Children
also get SIGTERM from the kernel if this process dies without cleaning up (Linux), so nothing
is left behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from robot_sql.config import ConfigError

CONFIGS = Path(__file__).resolve().parent / "configs"
ROBOT_SQL = str(Path(sys.executable).with_name("robot-sql"))
ENV_ID = "SawyerLegoStack-v0"
ACTOR_CONTROL_OFFSET = 5  # actor i's control channel is on PORT + 5 + i (5560 beside the default 5555)
STOP_GRACE_S = 15.0  # per stage: the learner writes a final checkpoint
STATUS_EVERY_S = 10.0
LOG_TAIL_LINES = 15
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # before restart 1, 2, ...; the last one from then on
RESTART_RESET_AFTER_S = 60.0  # a child that ran this long before dying starts the backoff again
# a stop on purpose, not restarted (as systemd's Restart=on-failure, which also counts SIGHUP and SIGPIPE)
CLEAN_EXITS = (0, -signal.SIGINT, -signal.SIGTERM)
MAX_FAST_DEATHS = 10  # given up at this many deaths in a row, all but the first within RESTART_RESET_AFTER_S of a start
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stage: int = 0  # stopped in decreasing stage order: 0 = last (the learner)
    run_lock: Path | None = None  # the learner: the run directory whose learner.lock it takes
    process: subprocess.Popen | None = None
    reported: bool = False  # this process's exit has been handled
    started_at: float = 0.0
    deaths: int = 0  # in a row, each soon after its start (the attempt number of the next restart)
    restart_at: float | None = None  # monotonic time of a restart to come
    waiting_for: set[int] = field(default_factory=set)  # leftover pids of the dead learner already named
    given_up: bool = False
    stood_aside_for: list[int] = field(default_factory=list)  # the learners (not ours) serving the run instead


def _die_with_parent() -> None:
    """In the child, before exec: own process group, and SIGTERM when the dry run's process dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def restart_delay(attempt: int) -> float:
    return RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S)) - 1]


class Supervisor:
    """Starts the children, restarts those that die, and stops them all (see the module docstring)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.stop_reason: str | None = None
        self.kill_now = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, child: Child) -> None:
        self._spawn(child)
        self.children.append(child)

    def _spawn(self, child: Child) -> None:
        with open(self.log_dir / f"{child.name}.log", "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} robot-sql {' '.join(child.args)}\n".encode())
            log.flush()
            child.process = subprocess.Popen(
                [ROBOT_SQL, *child.args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **child.env}, preexec_fn=_die_with_parent)
        child.started_at, child.reported = time.monotonic(), False
        say(f"{child.name:<14} pid {child.process.pid:<7} log {self.log_dir / (child.name + '.log')}")

    def on_signal(self, signum: int, _frame) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
        else:  # the second Ctrl-C: no more waiting
            self.kill_now = True
            self._signal_all(signal.SIGKILL)

    def supervise(self, duration: float | None, status) -> int:
        """Run until a signal, `duration`, or nothing left to run; restart what dies; then stop. Exit status."""
        started = last_status = time.monotonic()
        while self.stop_reason is None:
            time.sleep(0.2)
            self._handle_exits()
            self._restart_due()
            if self._nothing_left():
                self.stop_reason = "every child has exited"
            elif duration is not None and time.monotonic() - started >= duration:
                self.stop_reason = f"--duration {duration:g} s reached"
            elif time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                say(status() + self._notes())
        say(f"stopping ({self.stop_reason})")
        self.stop()
        return 1 if self.kill_now or self.given_up() else 0

    def given_up(self) -> list[str]:
        return [child.name for child in self.children if child.given_up]

    def _nothing_left(self) -> bool:
        return (all(child.process.poll() is not None and child.reported and child.restart_at is None
                    for child in self.children)
                and not any(learners_of(child.run_lock) for child in self.children if child.run_lock is not None))

    def _notes(self) -> str:
        now, notes = time.monotonic(), []
        for child in self.children:
            if child.restart_at is not None:
                notes.append(f"{child.name} restarts in {max(0.0, child.restart_at - now):.0f} s (attempt {child.deaths})")
            elif child.given_up:
                notes.append(f"{child.name} GIVEN UP after {child.deaths} deaths in a row, see its log")
            elif child.stood_aside_for:
                notes.append(f"{child.name}: pid {', '.join(map(str, child.stood_aside_for))} (not the dry run's) serves the run")
        return "; " + "; ".join(notes) if notes else ""

    def stop(self) -> None:
        for child in self.children:
            child.restart_at = None
        for stage in sorted({child.stage for child in self.children}, reverse=True):
            group = [child for child in self.children if child.stage == stage and child.process.poll() is None]
            for child in group:
                _signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for child in group:
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"{child.name}: no exit {STOP_GRACE_S:g} s after SIGTERM; killing")
                    _signal_group(child, signal.SIGKILL)
                    child.process.wait()
            for child in self.children:
                if child.stage == stage and not child.reported:
                    child.reported = True
                    say(f"{child.name} exited ({describe_exit(child.process.returncode)})")
        for child in self.children:  # whatever a child left in its group (it exited, they may not have)
            _signal_group(child, signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            _signal_group(child, signum)

    def _handle_exits(self) -> None:
        """One line per child that exited since the last call; a restart scheduled for one that died."""
        now = time.monotonic()
        for child in self.children:
            code = child.process.poll()
            if code is None or child.reported:
                continue
            child.reported = True
            _signal_group(child, signal.SIGKILL)  # what it left in its group (a learner's would hold the lock)
            if code in CLEAN_EXITS:
                what = ("stopped on purpose (the panel's Stop or a control `stop`): not restarted; "
                        "the panel's Start starts a learner again" if child.run_lock is not None
                        else "stopped on purpose: not restarted")
                say(f"{child.name} exited ({describe_exit(code)}); {what}")
                continue
            ran = now - child.started_at
            child.deaths = 1 if ran >= RESTART_RESET_AFTER_S else child.deaths + 1
            if child.deaths >= MAX_FAST_DEATHS:
                child.given_up = True
                say(f"{child.name} died ({describe_exit(code)}) after {ran:.0f} s; {child.deaths - 1} restarts in a row "
                    f"have died within {RESTART_RESET_AFTER_S:g} s of their start: GIVEN UP, not restarted (the rest "
                    f"runs on; Ctrl-C stops it); the end of its log:")
            else:
                delay = restart_delay(child.deaths)
                child.restart_at = now + delay
                say(f"{child.name} died ({describe_exit(code)}) after {ran:.0f} s; restarting it in {delay:g} s "
                    f"(attempt {child.deaths})" + ("; the end of its log:" if code > 0 else ""))
            if code > 0 or child.given_up:
                for line in tail(self.log_dir / f"{child.name}.log", LOG_TAIL_LINES):
                    say(f"  | {line}")

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None or now < child.restart_at or self.stop_reason is not None:
                continue
            if child.run_lock is not None:  # one learner per run: ours gone for good, and no other one there
                learners = learners_of(child.run_lock)
                leftovers = [pid for pid in learners if _process_group(pid) == child.process.pid]
                if leftovers:  # SIGKILLed with its group: wait until they are gone (they hold the lock)
                    if set(leftovers) - child.waiting_for:
                        say(f"{child.name}: waiting for pid {', '.join(map(str, leftovers))} of the dead one to be gone")
                        child.waiting_for.update(leftovers)
                    _signal_group(child, signal.SIGKILL)
                    continue
                if learners:
                    child.restart_at, child.stood_aside_for = None, learners
                    say(f"{child.name}: not restarted: pid {', '.join(map(str, learners))} (started outside the dry "
                        f"run, e.g. by the panel's Start) serves {child.run_lock}; it is stopped with the rest")
                    continue
            child.restart_at = None
            child.waiting_for.clear()
            self._spawn(child)


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal_group(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signum)  # the child leads its own group (setsid)


def describe_exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines that the newest start of a child wrote to its log (after its ==== header)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    header = text.rfind("\n==== ")
    return (text[header + 1:].splitlines()[1:] if header >= 0 else text.splitlines())[-lines:]


def say(message: str) -> None:
    click.echo(f"dry-run: {message}")


def check_ports_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as probe:
            # as ZeroMQ and uvicorn do: connections of a run just stopped (TIME_WAIT) do not block a restart
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ConfigError(
                    f"port {port} on 127.0.0.1 is in use (another dry run or robot-sql service?). Stop it, or "
                    f"choose other ports: --port for the learner (it uses PORT..PORT+2, actors PORT+5..), "
                    f"--panel-port for the panel") from None


def new_run_dir() -> Path:
    return Path("runs") / time.strftime("dry-run-%Y%m%d-%H%M%S")


def learner_status(address: str, token: str):
    """A one-line summary of the learner's status, for the periodic line."""
    from robot_sql.protocol import ControlClient, ControlError

    client = ControlClient(address, timeout_s=1.0, sender="dry-run", token=token)

    def line() -> str:
        try:
            s = client.call("status")
        except ControlError as error:
            return f"learner not answering ({error})"
        return (f"learner {s['state']} on {s['device']}: {s['updates']} updates ({s['update_rate']:.0f}/s), "
                f"weight version {s['weight_version']}, {s['transitions_total']} transitions "
                f"({s['ingest_rate']:.0f}/s) from {len(s['actors'])} actor session(s)")

    return line


def learners_of(run_root: Path) -> list[int]:
    """pids of running `robot-sql learner --run-dir RUN_ROOT ...` processes (from Linux's /proc)."""
    wanted = ["learner", "--run-dir", str(run_root)]
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(argv[i:i + 3] == wanted for i in range(len(argv))):
            pids.append(int(entry.name))
    return pids


def stop_learner_started_by_panel(run_root: Path) -> None:
    """The panel's Start launches a learner of its own, in its own session, once ours has been
    stopped from the panel: after our children, stop any learner still serving this run."""
    pids = learners_of(run_root)
    if not pids:
        return
    say(f"stopping the learner that the panel started (pid {', '.join(map(str, pids))})")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while (pids := learners_of(run_root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        say(f"learner pid {pid}: no exit {STOP_GRACE_S:g} s after SIGTERM; killing")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ros_children(actors: int, port: int, domain: int, token_file: Path) -> list[Child]:
    """sim-robot-i + actor-node-i on ROS domain domain+i (one simulated arm per domain)."""
    from robot_sql.ros_env import INSTALL, SIM_PROFILE, workspace_built

    if not workspace_built():
        raise ConfigError(
            f"--ros needs the colcon workspace built into {INSTALL}: run `make ros_ws` (or scripts/build_ros_ws.sh; "
            "the first build needs root once: sudo scripts/build_ros_ws.sh --links)")
    children = []
    for i in range(actors):
        env = {"ROS_DOMAIN_ID": str(domain + i), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        children.append(Child(f"sim-robot-{i}", ["sim-robot", "--params-file", str(SIM_PROFILE),
                                                 "--ros-args", "-p", "scene:=lego"], env, stage=1))
        children.append(Child(f"actor-node-{i}", [
            "actor-node", "--params-file", str(SIM_PROFILE), "--ros-args",
            "-p", f"actor.env:={ENV_ID}", "-p", f"actor.learner:=127.0.0.1:{port}", "-p", f"actor.name:=actor-node-{i}",
            "-p", f"actor.control_bind:=tcp://127.0.0.1:{port + ACTOR_CONTROL_OFFSET + i}", "-p", f"actor.seed:={i}",
            "-p", f"actor.control_token_file:={token_file}",
        ], env, stage=2))
    return children


def fast_children(actors: int, port: int, token_file: Path) -> list[Child]:
    return [Child(f"actor-{i}", ["actor", "--config", str(CONFIGS / "actor.yaml"), "--learner", f"127.0.0.1:{port}",
                                 "--name", f"actor-{i}", "--control-bind",
                                 f"tcp://127.0.0.1:{port + ACTOR_CONTROL_OFFSET + i}",
                                 "--control-token-file", str(token_file)],
                  {"ROBOT_SQL_ACTOR_SEED": str(i)}, stage=2)
            for i in range(actors)]


@click.command("dry-run")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: a new runs/dry-run-<time>); an existing one resumes.")
@click.option("--actors", type=click.IntRange(1, 16), default=1, show_default=True, help="Simulated arms feeding the learner.")
@click.option("--ros", is_flag=True, help="Through ROS 2: `sim-robot` + `actor-node` per arm instead of the in-process arm.")
@click.option("--port", type=click.IntRange(1024, 65000), default=5555, show_default=True,
              help="Learner data port (weights PORT+1, control PORT+2; actor i's control PORT+5+i).")
@click.option("--panel-port", type=click.IntRange(1024, 65535), default=8765, show_default=True, help="Panel port.")
@click.option("--ros-domain", type=click.IntRange(0, 232), default=None,
              help="First ROS domain with --ros (arm i on DOMAIN+i; default: $ROS_DOMAIN_ID, else 0).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop by itself after this many seconds (default: run until Ctrl-C).")
def dry_run_command(run_dir: Path | None, actors: int, ros: bool, port: int, panel_port: int, ros_domain: int | None,
                    duration: float | None) -> None:
    """Train SawyerLegoStack-v0 on simulated Sawyer arms with learner, actors and panel on loopback."""
    from robot_sql.panel.app import load_or_create_token
    from robot_sql.rundir import RunDir

    actor_ports = [port + ACTOR_CONTROL_OFFSET + i for i in range(actors)]
    check_ports_free([port, port + 1, port + 2, *actor_ports, panel_port])
    if ros:
        domain = ros_domain if ros_domain is not None else int(os.environ.get("ROS_DOMAIN_ID", "0"))
        if domain + actors - 1 > 232:
            raise ConfigError(f"ROS domains {domain}..{domain + actors - 1} go past 232 (Fast DDS's limit)")
    run_dir = run_dir or new_run_dir()
    token_file = run_dir / "control.token"
    arms = ros_children(actors, port, domain, token_file) if ros else fast_children(actors, port, token_file)

    resuming = run_dir.exists()
    run = RunDir.create(run_dir)
    control_token, _ = run.token("control")  # before any child starts: the actors read it, the learner keeps it
    token, _ = load_or_create_token(run, os.environ.get("ROBOT_SQL_PANEL_TOKEN"))  # a short one: one line, exit 2
    say(f"{'resuming' if resuming else 'new run directory'} {run.root}")
    learner = Child("learner", ["learner", "--run-dir", str(run.root), "--config", str(CONFIGS / "learner.yaml"),
                                "--port", str(port)], stage=0, run_lock=run.root)
    panel = Child("panel", ["panel", "--run-dir", str(run.root), "--port", str(panel_port),
                            "--learner-control", f"tcp://127.0.0.1:{port + 2}",
                            *[arg for p in actor_ports for arg in ("--actor-control", f"tcp://127.0.0.1:{p}")]],
                  stage=3)

    supervisor = Supervisor(run.root / "logs")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, supervisor.on_signal)
    try:
        for child in (learner, *arms, panel):
            if supervisor.stop_reason is None:
                supervisor.start(child)
        url = f"http://127.0.0.1:{panel_port}/"
        say(f"panel {url}?token={token}")
        where = "ROBOT_SQL_PANEL_TOKEN" if os.environ.get("ROBOT_SQL_PANEL_TOKEN") else run.root / "panel.token"
        say(f"token in {where}; scripts: curl -H 'Authorization: Bearer <token>' {url}api/status")
        say(f"training {ENV_ID} with {actors} {'ROS 2' if ros else 'in-process'} simulated arm(s); Ctrl-C stops everything")
        code = supervisor.supervise(duration, learner_status(f"tcp://127.0.0.1:{port + 2}", control_token))
        stop_learner_started_by_panel(run.root)
    except BaseException:
        supervisor.stop()
        raise
    say("all processes stopped" if code == 0 else "killed (second Ctrl-C)" if supervisor.kill_now
        else f"all processes stopped; given up before: {', '.join(supervisor.given_up())}")
    raise SystemExit(code)
