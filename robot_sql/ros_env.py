"""Finding the ROS 2 side: rclpy and the colcon workspace ros_ws/ with intera_core_msgs.

On the robot (ROS 2 Humble image) the user sources /opt/ros/humble and ros_ws/install/setup.bash
and everything imports. On a development machine rclpy comes from the pip wheels in the venv
and ros_ws/install is built by scripts/build_ros_ws.sh; `workspace_env()` gives the variables a
process needs to load the built messages, and `use_workspace()` loads them into the running
process, so that `robot-sql sim-robot` works without sourcing anything.
"""
from __future__ import annotations

import ctypes
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from robot_sql.config import ConfigError, S, load_settings

WORKSPACE = Path(os.environ.get("ROBOT_SQL_ROS_WS", Path(__file__).resolve().parent.parent / "ros_ws"))
INSTALL = WORKSPACE / "install"
SIM_PROFILE = WORKSPACE / "src" / "robot_sql_ros" / "config" / "sim.yaml"


def workspace_built() -> bool:
    return (INSTALL / "intera_core_msgs" / "share" / "intera_core_msgs" / "package.xml").is_file()


def workspace_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with ros_ws/install's packages on the Python, library and ament paths."""
    env = dict(os.environ if base is None else base)
    python_dir = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    prefixes = sorted(path for path in INSTALL.iterdir() if path.is_dir()) if INSTALL.is_dir() else []

    def prepend(name: str, paths: list[Path]) -> None:
        existing = [part for part in env.get(name, "").split(os.pathsep) if part]
        new = [str(path) for path in paths if path.is_dir() and str(path) not in existing]
        env[name] = os.pathsep.join(new + existing)

    prepend("PYTHONPATH", [prefix / "lib" / python_dir / "site-packages" for prefix in prefixes])
    prepend("LD_LIBRARY_PATH", [prefix / "lib" for prefix in prefixes])
    prepend("AMENT_PREFIX_PATH", prefixes + [Path(sys.prefix)])
    return env


def use_workspace() -> None:
    """Make ros_ws/install's packages importable in this running process.

    The message packages' Python extensions link against libraries in install/*/lib, which
    the dynamic loader only looks for in LD_LIBRARY_PATH as it was at start-up; loading those
    libraries first (by path) satisfies the links, and rosidl's own run-time lookups read the
    variable when they run, so setting it now is enough for them."""
    env = workspace_env()
    os.environ["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]
    os.environ["AMENT_PREFIX_PATH"] = env["AMENT_PREFIX_PATH"]
    for path in reversed(env["PYTHONPATH"].split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    pending = sorted(INSTALL.glob("*/lib/*.so"))
    while pending:  # libraries of one package need each other: load until nothing more loads
        failed = []
        for library in pending:
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(library)
        if len(failed) == len(pending):
            raise OSError(f"cannot load {', '.join(str(library) for library in failed)}")
        pending = failed


def require_messages() -> None:
    """Make `import intera_core_msgs` work in this process, or exit with a clear message."""
    try:
        import intera_core_msgs.msg  # noqa: F401
        import rclpy  # noqa: F401
        return
    except ImportError as error:
        problem = error
    if workspace_built():
        use_workspace()
        try:
            import intera_core_msgs.msg  # noqa: F401,F811
            import robot_sql_msgs.srv  # noqa: F401
            import rclpy  # noqa: F401,F811
            return
        except ImportError as error:
            problem = error
    raise click.ClickException(
        f"the ROS 2 messages cannot be imported ({problem}). Build the workspace with "
        f"scripts/build_ros_ws.sh, or source /opt/ros/<distro>/setup.bash and {INSTALL}/setup.bash"
    )


def declare_settings(node, settings_cls: type[S]) -> S:
    """Settings from ROS parameters. Every field is declared with its default (nested settings
    as dotted names, e.g. `actor.learner`), so a ROS 2 params file or `-p name:=value` sets it
    as `ros2 launch` does; the values are then validated by the settings class as usual."""
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    defaults = _flatten(settings_cls().model_dump(mode="json"))
    for name, value in defaults.items():
        try:
            if value is None:  # no type to infer: accept any
                node.declare_parameter(name, None, ParameterDescriptor(dynamic_typing=True))
            else:
                node.declare_parameter(name, value)
        except (InvalidParameterTypeException, InvalidParameterValueException) as error:
            raise ConfigError(f"parameter {name}: {error} (write lists of decimals as floats, e.g. 0.0)") from error
    values: dict = {}
    for name in defaults:
        value = node.get_parameter(name).value
        if value is not None:
            *parents, leaf = name.split(".")
            target = values
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = list(value) if isinstance(value, (list, tuple)) else value
    return load_settings(settings_cls, **values)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list) and value and any(isinstance(item, float) for item in value):
            flat[f"{prefix}{key}"] = [float(item) for item in value]
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def ros_arguments(params_file: str | None, ros_args: tuple[str, ...]) -> list[str]:
    """The user's ROS arguments with `--params-file FILE` added to their `--ros-args` section."""
    args = list(ros_args)
    if params_file:
        if "--ros-args" not in args:
            args = ["--ros-args", *args]
        at = args.index("--ros-args") + 1
        args[at:at] = ["--params-file", params_file]
    return args


ROBOT_SQL = str(Path(sys.executable).parent / "robot-sql")


def private_domain() -> int:
    """A DDS domain for one test or benchmark run (Fast DDS allows 0..232), so parallel runs do not talk."""
    return random.Random(f"{os.getpid()}-{time.time_ns()}").randrange(100, 232)


class ChildProcesses:
    """`robot-sql` commands as child processes on one ROS domain, logs in a folder; all of them
    stopped on close, even after failures (tests and benchmarks)."""

    def __init__(self, log_dir: Path, domain: int):
        self.log_dir, self.domain = log_dir, domain
        self.children: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                    "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def start(self, name: str, *args: str, niceness: int = 0) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "w") as log:
            child = subprocess.Popen([ROBOT_SQL, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
        self.children[name] = child
        return child

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def stop(self, name: str, sig=signal.SIGINT, timeout: float = 10.0) -> int | None:
        child = self.children[name]
        if child.poll() is None:
            child.send_signal(sig)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return child.returncode

    def close(self) -> None:
        for name in list(self.children):
            self.stop(name, timeout=5.0)


class Spinner:
    """Runs an rclpy executor for `node` in a daemon thread (callbacks only store what arrives;
    the caller's thread does the work). `close()` stops that thread before the node and the
    context go away: destroying a node its executor is still waiting on can abort the process."""

    def __init__(self, node, context=None):
        from rclpy.executors import SingleThreadedExecutor

        self.node, self.context = node, context
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, name="ros-executor", daemon=True)
        self.thread.start()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
