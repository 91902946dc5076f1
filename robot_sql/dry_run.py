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

Supervision: one line when a child exits; a child that fails (non-zero exit) is reported with
the end of its log and stops the dry run. Ctrl-C or SIGTERM stops the children (panel and
actors first, the learner last so that it checkpoints), each with SIGTERM to its group, then
SIGKILL after a grace period; a second Ctrl-C kills at once. A learner that the panel's Start
launched (after its Stop) is stopped the same way. Children also get SIGTERM from
the kernel if this process dies without cleaning up (Linux), so nothing is left behind.
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
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stage: int = 0  # stopped in decreasing stage order: 0 = last (the learner)
    process: subprocess.Popen | None = None
    reported: bool = False


def _die_with_parent() -> None:
    """In the child, before exec: own process group, and SIGTERM when the dry run's process dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Starts the children, reports their exits, and stops them all (see the module docstring)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.stop_reason: str | None = None
        self.kill_now = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, child: Child) -> None:
        with open(self.log_dir / f"{child.name}.log", "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} robot-sql {' '.join(child.args)}\n".encode())
            log.flush()
            child.process = subprocess.Popen(
                [ROBOT_SQL, *child.args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **child.env}, preexec_fn=_die_with_parent)
        self.children.append(child)
        say(f"{child.name:<14} pid {child.process.pid:<7} log {self.log_dir / (child.name + '.log')}")

    def on_signal(self, signum: int, _frame) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
        else:  # the second Ctrl-C: no more waiting
            self.kill_now = True
            self._signal_all(signal.SIGKILL)

    def supervise(self, duration: float | None, status) -> int:
        """Run until a signal, `duration`, a failed child, or all children gone; then stop. Exit status."""
        started = last_status = time.monotonic()
        failed = False
        while self.stop_reason is None:
            time.sleep(0.2)
            failed |= self._report_exits()
            if failed:
                self.stop_reason = "a child failed"
            elif all(child.process.poll() is not None for child in self.children):
                self.stop_reason = "every child has exited"
            elif duration is not None and time.monotonic() - started >= duration:
                self.stop_reason = f"--duration {duration:g} s reached"
            elif time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                say(status())
        say(f"stopping ({self.stop_reason})")
        self.stop()
        return 1 if failed or self.kill_now else 0

    def stop(self) -> None:
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
            self._report_exits(stopping=True)
        for child in self.children:  # whatever a child left in its group (it exited, they may not have)
            _signal_group(child, signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            _signal_group(child, signum)

    def _report_exits(self, stopping: bool = False) -> bool:
        """One line per child that exited since the last call; True if one failed on its own."""
        failed = False
        for child in self.children:
            code = child.process.poll()
            if code is None or child.reported:
                continue
            child.reported = True
            if code == 0 or (stopping and code in (-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM)):
                say(f"{child.name} exited ({describe_exit(code)})")
            else:
                failed = not stopping
                say(f"{child.name} FAILED ({describe_exit(code)}); the end of its log:")
                for line in tail(self.log_dir / f"{child.name}.log", LOG_TAIL_LINES):
                    say(f"  | {line}")
        return failed


def _signal_group(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signum)  # the child leads its own group (setsid)


def describe_exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


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


def learner_status(address: str):
    """A one-line summary of the learner's status, for the periodic line."""
    from robot_sql.protocol import ControlClient, ControlError

    client = ControlClient(address, timeout_s=1.0, sender="dry-run")

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


def ros_children(actors: int, port: int, domain: int) -> list[Child]:
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
        ], env, stage=2))
    return children


def fast_children(actors: int, port: int) -> list[Child]:
    return [Child(f"actor-{i}", ["actor", "--config", str(CONFIGS / "actor.yaml"), "--learner", f"127.0.0.1:{port}",
                                 "--name", f"actor-{i}", "--control-bind",
                                 f"tcp://127.0.0.1:{port + ACTOR_CONTROL_OFFSET + i}"],
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
        arms = ros_children(actors, port, domain)
    else:
        arms = fast_children(actors, port)

    run_dir = run_dir or new_run_dir()
    resuming = run_dir.exists()
    run = RunDir.create(run_dir)
    token = os.environ.get("ROBOT_SQL_PANEL_TOKEN") or load_or_create_token(run, None)[0]
    say(f"{'resuming' if resuming else 'new run directory'} {run.root}")
    learner = Child("learner", ["learner", "--run-dir", str(run.root), "--config", str(CONFIGS / "learner.yaml"),
                                "--port", str(port)], stage=0)
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
        code = supervisor.supervise(duration, learner_status(f"tcp://127.0.0.1:{port + 2}"))
        stop_learner_started_by_panel(run.root)
    except BaseException:
        supervisor.stop()
        raise
    say("all processes stopped" if code == 0 else "killed (second Ctrl-C)" if supervisor.kill_now else "stopped after a failure")
    raise SystemExit(code)
