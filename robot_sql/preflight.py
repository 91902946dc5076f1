"""`robot-sql preflight`: checks to pass before the actor node may move an arm.

Run it with the robot (or `robot-sql sim-robot`) up and the node's parameter file:
    robot-sql preflight --params-file ros_ws/src/robot_sql_ros/config/real_sawyer.yaml
It commands no motion. Each check prints PASS or FAIL with the numbers; the exit status is
1 if any check fails.

1. /robot/joint_states and /robot/limb/right/endpoint_state arrive at their rates;
2. the joint states name right_j0..right_j6 once each, with finite angles inside the limits;
3. limits and workspace are configured: the parameter file loads, the speed cap is set, the
   hand is inside the workspace box now and at the start pose;
4. the e-stop path works: /robot/set_super_stop makes /robot/state report stopped, and
   /robot/set_super_reset + /robot/set_super_enable bring it back (skip with --no-estop-check).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from robot_sql import sawyer

MIN_RATE_FRACTION = 0.8  # a topic must arrive at >= 80 % of its nominal rate
DISCOVERY_TIMEOUT_S = 5.0  # wait this long for the first joint state before measuring rates


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


class Listener:
    """Records arrival times and the latest message of the arm's topics (rclpy executor thread)."""

    def __init__(self, node):
        from intera_core_msgs.msg import EndpointState, RobotAssemblyState
        from sensor_msgs.msg import JointState

        self.arrivals: dict[str, list[float]] = {"joint_states": [], "endpoint_state": [], "state": []}
        self.latest: dict[str, object] = {}
        for key, message_type, topic in (("joint_states", JointState, "/robot/joint_states"),
                                         ("endpoint_state", EndpointState, "/robot/limb/right/endpoint_state"),
                                         ("state", RobotAssemblyState, "/robot/state")):
            node.create_subscription(message_type, topic, lambda message, key=key: self._store(key, message), 50)

    def _store(self, key: str, message) -> None:
        self.arrivals[key].append(time.monotonic())
        self.latest[key] = message

    def rate(self, key: str, since: float) -> float:
        arrivals = [t for t in self.arrivals[key] if t >= since]
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 2 else 0.0

    def wait_for_first(self, key: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.arrivals[key] and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(self.arrivals[key])

    def wait_for_state(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.latest.get("state")
            if state is not None and condition(state):
                return True
            time.sleep(0.02)
        return False


def topic_checks(listener: Listener, since: float, joint_state_rate_hz: float) -> list[Check]:
    checks = []
    for key, nominal in (("joint_states", joint_state_rate_hz), ("endpoint_state", joint_state_rate_hz)):
        rate = listener.rate(key, since)
        checks.append(Check(f"{key} rate", rate >= MIN_RATE_FRACTION * nominal,
                            f"{rate:.1f} Hz (need >= {MIN_RATE_FRACTION * nominal:.0f} Hz)"))
    joints = listener.latest.get("joint_states")
    if joints is None:
        checks.append(Check("joint names", False, "no joint state received"))
        return checks
    names = list(joints.name)
    missing = [name for name in sawyer.JOINT_NAMES if names.count(name) != 1]
    checks.append(Check("joint names", not missing and len(joints.position) == len(names),
                        f"missing or repeated: {missing}" if missing else f"{len(names)} names incl. right_j0..right_j6"))
    if not missing:
        q = np.asarray(joints.position)[[names.index(name) for name in sawyer.JOINT_NAMES]]
        inside = np.all(np.isfinite(q)) and np.all(q >= sawyer.POSITION_LOWER) and np.all(q <= sawyer.POSITION_UPPER)
        checks.append(Check("joint angles", bool(inside), f"{np.round(q, 3).tolist()}"))
    return checks


def configuration_checks(settings, listener: Listener) -> list[Check]:
    from robot_sql.kinematics import SawyerKinematics

    low, high = np.asarray(settings.workspace_low), np.asarray(settings.workspace_high)
    checks = [
        Check("workspace box", bool(np.all(low < high)), f"low {low.tolist()} high {high.tolist()} m"),
        Check("speed cap", 0 < settings.speed_fraction <= 1,
              f"speed_fraction {settings.speed_fraction} (max joint speeds "
              f"{np.round(settings.speed_fraction * sawyer.VELOCITY_LIMITS, 2).tolist()} rad/s)"),
        Check("stale-state timeout", settings.stale_after_s <= 3.0 / settings.actor.control_rate_hz,
              f"{settings.stale_after_s} s at {settings.actor.control_rate_hz} Hz control"),
    ]
    start_hand, _ = SawyerKinematics().hand(np.asarray(settings.start_pose))
    checks.append(Check("start pose in workspace", bool(np.all(start_hand >= low) and np.all(start_hand <= high)),
                        f"hand at {np.round(start_hand, 3).tolist()} m"))
    endpoint = listener.latest.get("endpoint_state")
    if endpoint is None:
        checks.append(Check("hand in workspace", False, "no endpoint state received"))
    else:
        p = endpoint.pose.position
        hand = np.array([p.x, p.y, p.z])
        checks.append(Check("hand in workspace", bool(np.all(hand >= low) and np.all(hand <= high)),
                            f"hand at {np.round(hand, 3).tolist()} m"))
    return checks


def estop_checks(node, listener: Listener, timeout: float) -> list[Check]:
    from std_msgs.msg import Bool, Empty

    stop = node.create_publisher(Empty, "/robot/set_super_stop", 10)
    reset = node.create_publisher(Empty, "/robot/set_super_reset", 10)
    enable = node.create_publisher(Bool, "/robot/set_super_enable", 10)
    if not listener.wait_for_state(lambda state: True, timeout):
        return [Check("e-stop path", False, "no /robot/state received")]
    if stop.get_subscription_count() == 0:
        return [Check("e-stop path", False, "nobody subscribes /robot/set_super_stop")]
    sent = time.monotonic()
    stop.publish(Empty())
    stopped = listener.wait_for_state(lambda state: state.stopped and not state.enabled, timeout)
    took = time.monotonic() - sent
    reset.publish(Empty())
    time.sleep(0.1)
    enable.publish(Bool(data=True))
    recovered = listener.wait_for_state(lambda state: not state.stopped and state.enabled, timeout)
    return [Check("e-stop path", stopped, f"/robot/state stopped after {1000 * took:.0f} ms" if stopped else
                  f"/robot/state did not report stopped within {timeout} s"),
            Check("re-enable after stop", recovered, "enabled again" if recovered else "did not re-enable")]


def run_preflight(params_file: str | None, listen_s: float, estop_check: bool, ros_args: tuple[str, ...]) -> list[Check]:
    import rclpy

    from robot_sql.config import ConfigError
    from robot_sql.ros_actor import NODE_NAME, ActorNodeSettings
    from robot_sql.ros_env import Spinner, declare_settings, ros_arguments

    rclpy.init(args=["robot-sql", *ros_arguments(params_file, ros_args)])
    # named as the actor node, so its section of the parameter file applies here
    spinner = Spinner(rclpy.create_node(NODE_NAME))
    node = spinner.node
    try:
        checks: list[Check] = []
        try:
            settings = declare_settings(node, ActorNodeSettings)
            checks.append(Check("parameters", True, params_file or "defaults"))
        except ConfigError as error:
            return [Check("parameters", False, str(error))]
        listener = Listener(node)
        listener.wait_for_first("joint_states", DISCOVERY_TIMEOUT_S)  # discovery takes a moment
        since = time.monotonic()
        time.sleep(listen_s)
        checks += topic_checks(listener, since, settings.joint_state_rate_hz)
        checks += configuration_checks(settings, listener)
        if estop_check:
            checks += estop_checks(node, listener, timeout=2.0)
        return checks
    finally:
        spinner.close()


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.option("--params-file", type=click.Path(exists=True, dir_okay=False),
              help="The actor node's ROS 2 parameter file (its robot_sql_actor section is checked).")
@click.option("--listen", "listen_s", default=2.0, show_default=True, help="Seconds to measure topic rates.")
@click.option("--estop-check/--no-estop-check", default=True, show_default=True,
              help="Assert and clear the robot's stop (/robot/set_super_stop, reset, enable). No motion.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@click.argument("ros_args", nargs=-1, type=click.UNPROCESSED)
def preflight_command(params_file, listen_s, estop_check, out, ros_args) -> None:
    """Check a Sawyer (or sim-robot) before any motion: topic rates, joint names, limits, workspace, e-stop."""
    from robot_sql.ros_env import require_messages

    require_messages()
    checks = run_preflight(params_file, listen_s, estop_check, ros_args)
    for check in checks:
        click.echo(f"{'PASS' if check.passed else 'FAIL'}  {check.name:26s} {check.detail}")
    if out:
        Path(out).write_text(json.dumps([asdict(check) for check in checks], indent=2))
    failed = [check.name for check in checks if not check.passed]
    if failed:
        raise click.ClickException(f"preflight failed: {', '.join(failed)}")
    click.echo("preflight passed")
