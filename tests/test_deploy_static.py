"""docker-compose.yml and deploy/ checked without a Docker engine: the files parse, every command
is a real `robot-sql` command whose options exist, every file an image needs is in the repository
and copied into it, ports and addresses agree across services, and the files stay readable by
Compose 1.29. The images of docker-compose.yml are also built and run in tests/test_docker_system.py;
the robot side's Humble image (deploy/robot/) is checked here only (no registry serves ros:humble
on the project's machines).
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


def stages(dockerfile: Path) -> dict[str, dict]:
    """The build stages in order: name (or index) -> {"parent": the stage it starts FROM, or None for
    an image, "steps": its instructions}."""
    found: dict[str, dict] = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(found))
            found[name] = {"parent": words[0] if words[0] in found else None, "steps": []}
        elif found:
            found[list(found)[-1]]["steps"].append((keyword, rest))
    return found


def chain(dockerfile: Path, target: str | None = None) -> list[tuple[str, str]]:
    """The instructions that make the image of `target` (default: the last stage), its parents' first."""
    all_stages = stages(dockerfile)
    name = target or list(all_stages)[-1]
    steps = []
    while name is not None:
        steps[:0] = all_stages[name]["steps"]
        name = all_stages[name]["parent"]
    return steps


def image_paths(dockerfile: Path, target: str | None = None) -> dict[str, str | None]:
    """Destination in the image -> source in the build context (None: from another stage), of every COPY."""
    copies, workdir = {}, "/"
    for keyword, rest in chain(dockerfile, target):
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        elif keyword == "COPY":
            words = rest.split()
            from_stage = any(word.startswith("--from=") for word in words)
            *sources, destination = [word for word in words if not word.startswith("--")]
            base = posixpath.normpath(posixpath.join(workdir, destination))
            into_folder = destination.endswith("/") or destination == "." or len(sources) > 1
            for source in sources:
                within = into_folder and not source.endswith("/")  # "dir/" copies what the folder holds
                copies[posixpath.join(base, Path(source).name) if within else base] = None if from_stage else source
    return copies


def in_image(path: str, copied: dict[str, str | None]) -> bool:
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
        target = service["build"].get("target")
        assert target is None or target in stages(dockerfile), f"{name}: {dockerfile} has no stage {target}"
        copied = image_paths(dockerfile, target)
        for source in filter(None, copied.values()):
            assert (context / source).exists(), f"{dockerfile}: COPY {source} is not in the context"
        for arg in [*service.get("command", []), *service.get("healthcheck", {}).get("test", [])]:
            if arg.startswith(IMAGE_ROOT + "/"):
                assert in_image(arg, copied), f"{name}: {arg} is not copied into {dockerfile} ({target})"


def images():
    """(Dockerfile, target) of every image: the stages of deploy/Dockerfile that compose builds, and the Humble one."""
    built = {(dockerfile_of(path, service)[1], service["build"].get("target"))
             for path, _, service in all_services() if "build" in service}
    assert {target for _, target in built} >= {"learner", "panel", "ros", None}, built
    return sorted(built, key=str)


@pytest.mark.parametrize("dockerfile, target", [pytest.param(d, t, id=f"{d.relative_to(REPO)}:{t or 'last stage'}") for d, t in images()])
def test_dockerfile_commands_are_real(dockerfile, target):
    steps = dict(chain(dockerfile, target))
    copied = image_paths(dockerfile, target)
    if "ENTRYPOINT" in steps:
        entrypoint = json.loads(steps["ENTRYPOINT"])
        source = REPO / copied[entrypoint[0]]
        assert source.is_file() and source.stat().st_mode & 0o111, f"{source} is not an executable file"
        assert source.read_text().rstrip().splitlines()[-1].startswith('exec "$@"'), "the entrypoint must run the command"
    command = json.loads(steps["CMD"])
    check_robot_sql_command(command)
    assert all(in_image(arg, copied) for arg in command if arg.startswith(IMAGE_ROOT + "/")), command


def test_the_dry_run_images_run_as_a_user_and_keep_no_build_tools():
    dockerfile = REPO / "deploy" / "Dockerfile"
    for target in ("learner", "panel", "ros"):
        steps = chain(dockerfile, target)
        users = [rest for keyword, rest in steps if keyword == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
        installs = " ".join(rest for keyword, rest in steps if keyword == "RUN" and "apt-get install" in rest)
        for tool in ("g++", "gcc", "cmake", "make ", "build-essential", "-dev"):
            assert tool not in installs, f"{target} installs {tool.strip()}"
        for keyword, rest in steps:
            if keyword == "RUN" and "apt-get install" in rest:
                assert "rm -rf /var/lib/apt/lists/*" in rest, f"{target}: apt lists left in the image"
            if keyword == "COPY" and "deploy/wheels" in rest:
                raise AssertionError(f"{target}: the wheelhouse is copied into the image")
    env = " ".join(rest for keyword, rest in chain(dockerfile, "learner") if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env  # no pip cache in any layer


def test_compose_files_suit_compose_1_29():
    for path in COMPOSE_FILES:
        document = load(path)
        assert "name" not in document, f"{path.name}: Compose 1.29 refuses the top-level name: key"
        assert "version" not in document or str(document["version"]).startswith(("2", "3")), path


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
    assert panel["ports"] == [f"127.0.0.1:${{ROBOT_SQL_PANEL_PORT:-{panel_port}}}:{panel_port}"]  # the host's loopback only
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
