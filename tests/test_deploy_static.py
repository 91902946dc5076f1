"""docker-compose.yml and deploy/ checked without a Docker engine (none runs on these machines):
the files parse, every command is a real `robot-sql` command whose options exist, every file an
image needs is in the repository and copied into it, and ports and addresses agree across services.
"""
from __future__ import annotations

import functools
import json
import posixpath
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from robot_sql.ros_actor import ActorNodeSettings
from robot_sql.service_settings import ActorSettings
from robot_sql.sim.ros_driver import SimRobotSettings
from tests.panel_support import ROBOT_SQL

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "gpu.yml", REPO / "deploy" / "robot" / "compose.yml"]
IMAGE_ROOT = "/app"  # every Dockerfile copies the repository's files under /app (WORKDIR)
ROS_PARAMETERS = {"actor-node": ActorNodeSettings, "sim-robot": SimRobotSettings}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # safe_load resolves the `<<: *anchor` merges


def services(path: Path) -> dict[str, dict]:
    return load(path)["services"]


@functools.cache
def help_text(subcommand: str) -> str:
    result = subprocess.run([ROBOT_SQL, subcommand, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"robot-sql {subcommand} --help failed:\n{result.stderr}"
    return result.stdout


def check_robot_sql_command(command: list[str]) -> None:
    """`robot-sql SUB [--opt ...] [--ros-args -p name:=value ...]`: SUB answers --help, knows every
    --opt, and every ROS parameter is a field of the node's settings."""
    assert command[0] == "robot-sql", command
    subcommand, args = command[1], command[2:]
    text = help_text(subcommand)
    ros_args = args[args.index("--ros-args") + 1:] if "--ros-args" in args else []
    options = [arg for arg in args[:len(args) - len(ros_args)] if arg.startswith("--") and arg != "--ros-args"]
    for option in options:
        assert re.search(rf"(^|\s){re.escape(option)}\b", text), f"robot-sql {subcommand} has no option {option}"
    for flag, parameter in zip(ros_args[::2], ros_args[1::2]):
        assert flag == "-p", ros_args
        name = parameter.split(":=")[0]
        fields = ROS_PARAMETERS[subcommand].model_fields
        *parents, leaf = name.split(".")
        for parent in parents:
            assert parent == "actor", name
            fields = ActorSettings.model_fields
        assert leaf in fields, f"{subcommand}: no parameter {name!r}"
    for arg in args:  # files named inside the image are the repository's
        if arg.startswith(IMAGE_ROOT + "/"):
            assert (REPO / arg[len(IMAGE_ROOT) + 1:]).is_file(), f"{arg} is not in the repository"


def dockerfile_of(compose_path: Path, service: dict) -> tuple[Path, Path]:
    context = (compose_path.parent / service["build"]["context"]).resolve()
    return context, context / service["build"].get("dockerfile", "Dockerfile")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def image_paths(dockerfile: Path) -> dict[str, str]:
    """Destination in the image -> source in the build context, of every COPY."""
    copies, workdir = {}, "/"
    for keyword, rest in instructions(dockerfile):
        if keyword == "WORKDIR":
            workdir = rest
        elif keyword == "COPY":
            *sources, destination = rest.split()
            base = posixpath.normpath(posixpath.join(workdir, destination))
            into_folder = destination.endswith("/") or destination == "." or len(sources) > 1
            for source in sources:
                copies[f"{base}/{Path(source).name}" if into_folder else base] = source
    return copies


def in_image(path: str, copied: dict[str, str]) -> bool:
    return any(path == destination or path.startswith(destination + "/") for destination in copied)


def all_services():
    return [(path, name, service) for path in COMPOSE_FILES for name, service in services(path).items()]


def test_compose_files_parse_and_name_their_volumes():
    for path in COMPOSE_FILES:
        document = load(path)
        assert isinstance(document["services"], dict) and document["services"], path
        declared = set(document.get("volumes") or {})
        for name, service in document["services"].items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if not source.startswith((".", "/")):
                    assert source in declared, f"{path.name}: {name} uses undeclared volume {source}"


@pytest.mark.parametrize("path, name, service", [pytest.param(*s, id=f"{s[0].name}:{s[1]}") for s in all_services()
                                                 if "command" in s[2]])
def test_every_service_command_is_a_real_robot_sql_command(path, name, service):
    check_robot_sql_command(service["command"])


def test_every_build_context_and_dockerfile_exists_and_images_have_what_commands_name():
    for path, name, service in all_services():
        if "build" not in service:
            continue
        context, dockerfile = dockerfile_of(path, service)
        assert context == REPO, f"{name}: build context {context} is not the repository root"
        assert dockerfile.is_file(), f"{name}: no {dockerfile}"
        copied = image_paths(dockerfile)
        for source in copied.values():
            assert (context / source).exists(), f"{dockerfile}: COPY {source} is not in the context"
        for arg in service.get("command", []):
            if arg.startswith(IMAGE_ROOT + "/"):
                assert in_image(arg, copied), f"{name}: {arg} is not copied into {dockerfile}"


@pytest.mark.parametrize("dockerfile", sorted((REPO / "deploy").glob("*/Dockerfile")), ids=lambda p: p.parent.name)
def test_dockerfile_commands_are_real(dockerfile):
    steps = dict(instructions(dockerfile))
    assert steps.get("FROM"), dockerfile
    copied = image_paths(dockerfile)
    if "ENTRYPOINT" in steps:
        entrypoint = json.loads(steps["ENTRYPOINT"])
        source = REPO / copied[entrypoint[0]]
        assert source.is_file() and source.stat().st_mode & 0o111, f"{source} is not an executable file"
        assert source.read_text().rstrip().splitlines()[-1].startswith('exec "$@"'), "the entrypoint must run the command"
    command = json.loads(steps["CMD"])
    check_robot_sql_command(command)
    assert all(in_image(arg, copied) for arg in command if arg.startswith(IMAGE_ROOT + "/")), command


def test_ports_and_addresses_agree_across_services():
    compose = services(REPO / "docker-compose.yml")
    learner, actor, panel, sim = compose["learner"], compose["actor-node"], compose["panel"], compose["sim"]

    def option(command: list[str], name: str) -> str:
        return command[command.index(name) + 1]

    def parameter(command: list[str], name: str) -> str:
        return next(arg.split(":=", 1)[1] for arg in command if arg.startswith(f"{name}:="))

    port = int(option(learner["command"], "--port"))
    assert learner["environment"]["ROBOT_SQL_LEARNER_HOST"] == "0.0.0.0"  # reachable from the other containers
    assert {str(port + i) for i in range(3)} <= set(learner["expose"])
    assert parameter(actor["command"], "actor.learner") == f"learner:{port}"
    assert option(panel["command"], "--learner-control") == f"tcp://learner:{port + 2}"
    assert f"127.0.0.1:{port + 2}" in " ".join(learner["healthcheck"]["test"])

    control = parameter(actor["command"], "actor.control_bind")
    host, actor_port = re.fullmatch(r"tcp://([\d.]+):(\d+)", control).groups()
    assert host == "0.0.0.0" and actor_port in actor["expose"]
    assert option(panel["command"], "--actor-control") == f"tcp://actor-node:{actor_port}"
    assert f"127.0.0.1:{actor_port}" in " ".join(actor["healthcheck"]["test"])
    assert actor["environment"]["ROS_DOMAIN_ID"] == sim["environment"]["ROS_DOMAIN_ID"]  # the node sees the driver

    panel_port = option(panel["command"], "--port")
    assert panel["ports"] == [f"127.0.0.1:{panel_port}:{panel_port}"]  # the host's loopback only
    assert option(panel["command"], "--host") == "0.0.0.0"
    assert f"127.0.0.1:{panel_port}/health" in " ".join(panel["healthcheck"]["test"])
    assert re.fullmatch(r"\$\{ROBOT_SQL_PANEL_TOKEN:\?[^}]*\}", panel["environment"]["ROBOT_SQL_PANEL_TOKEN"])

    run_dir = option(learner["command"], "--run-dir")
    assert option(panel["command"], "--run-dir") == run_dir
    for service in (learner, panel):
        assert any(run_dir.startswith(volume.split(":")[1]) for volume in service["volumes"])

    gpu = services(REPO / "deploy" / "gpu.yml")
    assert set(gpu) <= set(compose)
    assert gpu["learner"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
