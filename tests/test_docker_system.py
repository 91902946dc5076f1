"""The simulated dry run in real containers: docker-compose.yml's images (deploy/Dockerfile) built
and run by a Docker engine, driven the way a user drives them.

Needs a Docker engine, Compose (2, or 1.29: `docker-compose`), and what scripts/images.sh prepares
(the base image and the wheelhouse): CI's .ci/run installs the engine and runs that script. Without
an engine the tests skip with the reason (and fail under ROBOT_SQL_REQUIRE_ALL=1).

The learner is made small through a Compose override (environment only): a 100k-transition
replay, 200 transitions before the first update, weights every 5 updates, a checkpoint every 5 s.
Each test's project is removed with `down -v` when it ends, pass or fail.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from robot_sql.ports import free_port
from tests import panel_support
from tests.conftest import failed, require

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = "/runs/dry-run"
LEARNER_CONTROL = "tcp://127.0.0.1:5557"
ACTOR_CONTROL = "tcp://127.0.0.1:5560"
SMALL_LEARNER = """\
services:
  learner:
    environment:
      ROBOT_SQL_LEARNER_REPLAY_CAPACITY: "100000"
      ROBOT_SQL_LEARNER_MIN_REPLAY: "200"
      ROBOT_SQL_LEARNER_PUBLISH_EVERY: "5"
      ROBOT_SQL_LEARNER_CHECKPOINT_EVERY_S: "5"
"""
# SIGKILL to `robot-sql learner` in its container, found in /proc (the image has no ps); not to
# PID 1, docker-init, whose child the learner is (compose's `init: true`)
KILL_THE_LEARNER = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    if int(pid) != 1 and any(a.endswith(b"robot-sql") and b == b"learner" for a, b in zip(argv, argv[1:])):
        os.kill(int(pid), signal.SIGKILL)
"""
# read in a container of the learner's image from a copy of the replay in the `runs` volume:
# the batch numbers (seqs) stored per actor session (shown as its session_tag), and the transitions
READ_REPLAY = """
import json, shutil, tempfile
from robot_sql.learner import make_env
from robot_sql.protocol import session_tag
from robot_sql.replay_store import ReplayStore
env = make_env("SawyerLegoStack-v0")
copy = tempfile.mkdtemp() + "/replay"
shutil.copytree("/runs/dry-run/replay", copy)
store = ReplayStore(copy, env.observation_space.shape[0], env.action_space.shape[0], 100000)
print(json.dumps({"transitions_total": store.transitions_total,
                  "seen": {session_tag(s): [[a, b] for a, b in zip(seqs.starts, seqs.ends)] for s, seqs in store.seen.items()}}))
store.close()
"""


@functools.cache
def compose_command() -> list[str] | None:
    """Compose 2 where `docker compose` answers, else Compose 1 (docker-compose); ROBOT_SQL_COMPOSE picks one."""
    chosen = os.environ.get("ROBOT_SQL_COMPOSE")
    candidates = [chosen.split()] if chosen else [["docker", "compose"], ["docker-compose"]]
    for candidate in candidates:
        if shutil.which(candidate[0]) and subprocess.run([*candidate, "version"], capture_output=True, timeout=60).returncode == 0:
            return candidate
    return None


@functools.cache
def engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


def require_compose() -> list[str]:
    command = compose_command()
    require(command is not None, "neither `docker compose` nor docker-compose is installed (Debian: apt-get install docker-compose)")
    return command


def require_engine() -> None:
    require_compose()
    require(engine_answers(), "no Docker engine answers (`docker info` failed): start dockerd; CI's .ci/run starts one")


def require_build_inputs() -> None:
    require_engine()
    base = os.environ.get("ROBOT_SQL_BASE_IMAGE", "robot-sql-base:bookworm")
    has_base = subprocess.run(["docker", "image", "inspect", base], capture_output=True, timeout=60).returncode == 0
    require(has_base and (REPO / "deploy" / "wheels" / "requirements.txt").is_file(),
            f"no base image {base} or no wheelhouse in deploy/wheels: run scripts/images.sh first")


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


class Stack:
    """One compose project of docker-compose.yml (+ the small-learner override) and the panel on the host."""

    def __init__(self, work: Path, panel_port: int):
        self.project = f"robot-sql-test-{os.getpid()}-{secrets.token_hex(2)}"
        override = work / "small-learner.yml"
        override.write_text(SMALL_LEARNER)
        self.files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(override)]
        self.token = secrets.token_hex(24)
        self.panel = f"http://127.0.0.1:{panel_port}"
        self.env = {**os.environ, "ROBOT_SQL_PANEL_TOKEN": self.token, "ROBOT_SQL_PANEL_PORT": str(panel_port)}
        self.log = work / "compose.log"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*require_compose(), "-p", self.project, *self.files, *args], cwd=REPO, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        with open(self.log, "a") as log:
            log.write(f"$ compose {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}\n")
        if check:
            assert result.returncode == 0, f"compose {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return subprocess.run(["docker", "inspect", "-f", template, self.container(service)], capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()

    def control(self, service: str, address: str, command: str, *args: str, timeout: float = 10) -> dict | None:
        """One control request from inside the service's container, with the run's token; None without an answer."""
        result = self.compose("exec", "-T", service, "robot-sql", "control", "--run-dir", RUN_DIR, "--address", address,
                              "--timeout", str(timeout), command, *args, timeout=timeout + 60, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def learner(self) -> dict | None:
        return self.control("learner", LEARNER_CONTROL, "status")

    def actor(self, unacked_seqs: bool = False) -> dict | None:
        return self.control("actor-node", ACTOR_CONTROL, "status", *(["unacked_seqs=true"] if unacked_seqs else []))

    def joint_positions(self) -> list[float]:
        """What the simulated arm publishes on /robot/joint_states now, read in the sim container."""
        result = self.compose("exec", "-T", "sim", "python", "/app/deploy/ros_health.py", "10", timeout=90)
        return json.loads(result.stdout.strip().splitlines()[-1])["position"]

    def get(self, path: str, token: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        return httpx.get(self.panel + path, headers=headers, timeout=15)

    def post(self, path: str) -> httpx.Response:
        return httpx.post(self.panel + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def panel_status(self) -> dict | None:
        try:
            response = self.get("/api/status")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def read_replay(self) -> dict:
        """The replay in the `runs` volume, read with the learner's own code while no learner writes it."""
        result = subprocess.run(["docker", "run", "--rm", "-v", f"{self.project}_runs:/runs:ro", "robot-sql-learner",
                                 "python", "-c", READ_REPLAY], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, command in {"containers": ["ps", "-a"], "networks": ["network", "ls"], "volumes": ["volume", "ls"]}.items():
            ids = subprocess.run(["docker", *command, "-q", "--filter", label], capture_output=True, text=True,
                                 timeout=60, check=True).stdout.split()
            found[kind] = ids
        volume = subprocess.run(["docker", "volume", "inspect", f"{self.project}_runs"], capture_output=True, timeout=60)
        if volume.returncode == 0:
            found["volumes"].append(f"{self.project}_runs")
        return found


def wait_for(what: str, condition, timeout: float, interval_s: float = 2.0):
    """panel_support.wait_for, by default every 2 s: each poll is a docker or HTTP call into the stack."""
    return panel_support.wait_for(condition, timeout, what, interval_s)


def acked_seqs(status: dict) -> set[int]:
    """The batches the actor has had acknowledged: every one it numbered, but those it still holds."""
    return set(range(1, status["last_seq"] + 1)) - set(status["unacked_seqs"])


def stored_seqs(replay: dict, tag: str) -> set[int]:
    return {seq for start, end in replay["seen"].get(tag, []) for seq in range(start, end + 1)}


@pytest.fixture
def stack(tmp_path, request):
    require_build_inputs()
    port = 8765
    with socket.socket() as probe:  # the default port where it is free (CI), else any free one
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            port = free_port()
    stack = Stack(tmp_path, port)
    yield stack
    if failed(request):
        logs = stack.compose("logs", "--no-color", "--tail", "60", timeout=120, check=False)
        print(f"==== compose logs of {stack.project}\n{logs.stdout[-20000:]}")
        print(f"==== compose commands\n{stack.log.read_text()[-10000:]}")
    stack.compose("down", "-v", "--remove-orphans", "-t", "20", timeout=300, check=False)
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}


def test_the_dry_run_in_containers_trains_obeys_the_e_stop_survives_a_learner_crash_and_resumes(stack):
    started = time.monotonic()
    stack.compose("up", "-d", "--build", timeout=1200)  # the images CI builds are the ones compose builds
    print(f"up --build: {time.monotonic() - started:.0f} s")

    # the panel on the host's loopback; /health open, everything else behind the token
    wait_for("the panel's /health on the host", lambda: _status_code(stack.panel + "/health") == 200, 180)
    assert stack.get("/api/status", token=False).status_code == 401

    # the learner trains on the actor node's transitions, seen through the panel
    first = wait_for("SQL updates on transitions from the actor node, through the panel",
                     lambda: (s := stack.panel_status()) and (learner := s["learner"]["status"]) and learner["updates"] > 0
                     and s["actors"][0]["status"] and s["actors"][0]["status"]["acked_transitions"] > 0 and s, 300)
    learner = first["learner"]["status"]
    senders = [actor["sender"] for actor in learner["actors"].values() if actor["transitions"] > 0]
    assert senders == [first["actors"][0]["status"]["name"]], learner  # the transitions are the actor node's
    wait_for("newer weights and more updates",
             lambda: (s := stack.panel_status()) and s["learner"]["status"]
             and s["learner"]["status"]["weight_version"] > learner["weight_version"]
             and s["learner"]["status"]["updates"] > learner["updates"], 120)
    print(f"training through the panel: {time.monotonic() - started:.0f} s")

    # E-STOP on the panel reaches the actor node in its container: it stops stepping and the arm holds
    estop = stack.post("/api/estop")
    assert estop.status_code == 200 and estop.json()["actors"]["actor-0"]["reply"]["estopped"], estop.text
    held = wait_for("the actor node holding", lambda: (s := stack.actor()) and s["estopped"] and s["holding"] and s, 30)
    time.sleep(1.0)
    before = stack.joint_positions()
    time.sleep(2.0)
    after = stack.joint_positions()
    assert max(abs(a - b) for a, b in zip(before, after)) < 2e-3, (before, after)  # the simulated arm is still
    assert stack.actor()["steps"] == held["steps"]  # and the node sends it nothing
    assert stack.control("actor-node", ACTOR_CONTROL, "rearm", timeout=30) is not None
    wait_for("the actor node stepping again", lambda: (s := stack.actor()) and not s["estopped"] and s["steps"] > held["steps"], 60)

    # the learner dies (killed inside its container, as the OOM killer would): the engine restarts it,
    # the actor node keeps what was not acknowledged, and nothing acknowledged is lost
    before_crash = wait_for("an actor status", lambda: stack.actor(unacked_seqs=True), 30)
    learner_before = wait_for("the learner's status", stack.learner, 30)
    stack.compose("exec", "-T", "learner", "python", "-c", KILL_THE_LEARNER, check=False)
    wait_for("the engine's restart of the learner", lambda: int(stack.inspect("learner", "{{.RestartCount}}")) >= 1, 60)
    gap = wait_for("the actor node holding transitions nobody acknowledged",
                   lambda: (s := stack.actor(unacked_seqs=True)) and s["unacked_seqs"] and s, 60, interval_s=0.5)
    back = wait_for("the restarted learner on newer weights",
                    lambda: (s := stack.learner()) and s["weight_version"] > learner_before["weight_version"] and s, 240)
    assert back["transitions_total"] >= learner_before["transitions_total"]
    delivered = wait_for("the held transitions acknowledged by the restarted learner",
                         lambda: (s := stack.actor(unacked_seqs=True)) and s["connected"]
                         and not set(gap["unacked_seqs"]) & set(s["unacked_seqs"]) and s, 180)
    assert delivered["session_tag"] == before_crash["session_tag"] and delivered["dropped_transitions"] == 0
    assert acked_seqs(delivered) > acked_seqs(before_crash)
    print(f"learner crash and restart: {time.monotonic() - started:.0f} s")

    # down, then up: the run resumes from the `runs` volume
    at_down = wait_for("the learner's status", stack.learner, 30)
    stack.compose("down", timeout=300)
    assert stack.leftovers()["containers"] == []
    replay = stack.read_replay()  # nothing runs: the replay as the stopped learner left it
    stored = stored_seqs(replay, before_crash["session_tag"])
    assert acked_seqs(before_crash) <= stored and acked_seqs(delivered) <= stored, "acknowledged transitions were lost"
    assert replay["transitions_total"] >= at_down["transitions_total"]
    stack.compose("up", "-d", timeout=600)
    resumed = wait_for("the resumed learner", stack.learner, 240)
    assert resumed["transitions_total"] >= at_down["transitions_total"]
    wait_for("weight versions above the previous run's",
             lambda: (s := stack.learner()) and s["weight_version"] > at_down["weight_version"], 240)
    wait_for("the panel of the resumed run", lambda: _status_code(stack.panel + "/health") == 200, 120)
    print(f"down and up: {time.monotonic() - started:.0f} s")

    # down -v: nothing of the project is left (the fixture checks it again after its own down -v)
    stack.compose("down", "-v", timeout=300)
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
    print(f"whole test: {time.monotonic() - started:.0f} s")


def _status_code(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


# ---------------------------------------------------------------------------- the files, with Compose itself


def test_compose_reads_the_files_and_the_gpu_overlay():
    compose = require_compose()
    env = {**os.environ, "ROBOT_SQL_PANEL_TOKEN": "x" * 48, "ROBOT_SQL_LEARNER": "gpu-host:5555"}
    for files in (["docker-compose.yml"], ["docker-compose.yml", "deploy/gpu.yml"], ["deploy/robot/compose.yml"]):
        arguments = [word for name in files for word in ("-f", name)]
        result = subprocess.run([*compose, *arguments, "config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{files}: {result.stderr}"
    gpu = subprocess.run([*compose, "-f", "docker-compose.yml", "-f", "deploy/gpu.yml", "config"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60).stdout
    assert "driver: nvidia" in gpu and "gpu" in gpu


# ---------------------------------------------------------------------------- bad input: one line each


def test_a_missing_token_is_one_line_that_says_what_to_do():
    compose = require_compose()
    env = {key: value for key, value in os.environ.items() if key != "ROBOT_SQL_PANEL_TOKEN"}
    result = subprocess.run([*compose, "config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "export ROBOT_SQL_PANEL_TOKEN=`openssl rand -hex 24`" in one_line(result.stderr)
    result = subprocess.run([str(REPO / "scripts" / "compose.sh"), "up", "-d"], env=env, capture_output=True, text=True, timeout=120)
    if engine_answers():
        line = one_line(result.stderr)
        assert result.returncode == 1 and "ROBOT_SQL_PANEL_TOKEN is not set: export ROBOT_SQL_PANEL_TOKEN=$(openssl rand -hex 24)" in line
    short = subprocess.run([str(REPO / "scripts" / "compose.sh"), "up", "-d"], env={**env, "ROBOT_SQL_PANEL_TOKEN": "short"},
                           capture_output=True, text=True, timeout=120)
    if engine_answers():
        assert short.returncode == 1 and "too short" in one_line(short.stderr)


def test_no_docker_engine_is_one_line_that_says_what_to_do(tmp_path):
    require_compose()
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "ROBOT_SQL_PANEL_TOKEN": "x" * 48}
    for script, arguments in (("compose.sh", ["up", "-d"]), ("images.sh", ["build"])):
        result = subprocess.run([str(REPO / "scripts" / script), *arguments], env=env, capture_output=True, text=True, timeout=120)
        line = one_line(result.stderr)
        assert result.returncode == 1 and "no Docker engine answers" in line and "start it" in line, (script, line)


def test_a_taken_panel_port_is_one_line_that_says_what_to_do():
    require_engine()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        project = f"robot-sql-test-{os.getpid()}-port"
        env = {**os.environ, "ROBOT_SQL_PANEL_TOKEN": secrets.token_hex(24), "ROBOT_SQL_PANEL_PORT": str(port)}
        result = subprocess.run([str(REPO / "scripts" / "compose.sh"), "-p", project, "up", "-d"], env=env,
                                capture_output=True, text=True, timeout=120)
    line = one_line(result.stderr)
    assert result.returncode == 1 and f"127.0.0.1:{port}, the panel's port, is taken" in line and "ROBOT_SQL_PANEL_PORT=" in line
    started = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert started == []  # refused before anything started
