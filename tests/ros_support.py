"""Shared by the ROS 2 tests: separate processes on a private DDS domain, and an in-test probe node."""
from __future__ import annotations

import time

import numpy as np

from robot_sql.ros_env import Spinner, workspace_built
from tests.conftest import require


def require_ros() -> None:
    require(workspace_built(), "ros_ws is not built (scripts/build_ros_ws.sh; make test builds it)")
    try:
        from robot_sql.ros_env import require_messages

        require_messages()
    except Exception as error:  # noqa: BLE001 - any failure here means "no ROS 2 on this machine"
        require(False, f"ROS 2 messages cannot be loaded: {error}")


class Probe:
    """An rclpy node in the test process: records what is on the arm's topics (with arrival
    times, time.monotonic()) and publishes targets, e-stops and bad messages."""

    def __init__(self, domain: int):
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from intera_core_msgs.msg import EndpointState, JointCommand
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("test_probe", context=self.context)
        self.joint_states: list[tuple[float, float, np.ndarray, np.ndarray]] = []  # (arrival, stamp, q, dq)
        self.endpoints: list[tuple[float, np.ndarray]] = []
        self.commands: list[tuple[float, object]] = []
        self.node.create_subscription(JointState, "/robot/joint_states", self._on_joints, 50)
        self.node.create_subscription(EndpointState, "/robot/limb/right/endpoint_state", self._on_endpoint, 50)
        self.node.create_subscription(JointCommand, "/robot/limb/right/joint_command", self._on_command, 50)
        self.target_pub = self.node.create_publisher(PoseStamped, "/robot_sql/target_pose", 10)
        self.estop_pub = self.node.create_publisher(Bool, "/robot_sql/estop", 10)
        self.joint_state_pub = self.node.create_publisher(JointState, "/robot/joint_states", 10)
        self.endpoint_pub = self.node.create_publisher(EndpointState, "/robot/limb/right/endpoint_state", 10)
        self.PoseStamped, self.Bool, self.JointState, self.EndpointState = PoseStamped, Bool, JointState, EndpointState
        self.JointCommand = JointCommand
        self.spinner = Spinner(self.node, self.context)

    def _on_joints(self, message) -> None:
        names = list(message.name)
        if message.header.stamp.sec == 0:
            return  # not from the driver (the tests' own malformed messages)
        if all(f"right_j{i}" in names for i in range(7)) and len(message.position) == len(names):
            index = [names.index(f"right_j{i}") for i in range(7)]
            stamp = message.header.stamp.sec + 1e-9 * message.header.stamp.nanosec
            velocity = np.asarray(message.velocity)[index] if len(message.velocity) == len(names) else np.zeros(7)
            self.joint_states.append((time.monotonic(), stamp, np.asarray(message.position)[index], velocity))

    def _on_endpoint(self, message) -> None:
        p = message.pose.position
        self.endpoints.append((time.monotonic(), np.array([p.x, p.y, p.z])))

    def _on_command(self, message) -> None:
        self.commands.append((time.monotonic(), message))

    def publish_target(self, position, quat_wxyz=(0.0, np.sqrt(0.5), np.sqrt(0.5), 0.0), frame="base") -> None:
        message = self.PoseStamped()
        message.header.frame_id = frame
        message.pose.position.x, message.pose.position.y, message.pose.position.z = map(float, position)
        o = message.pose.orientation
        o.w, o.x, o.y, o.z = map(float, quat_wxyz)
        self.target_pub.publish(message)

    def transport_delay(self) -> float:
        """p99 of joint-state arrival minus header stamp (same machine, same clock), in s."""
        arrivals = [(time.time() - (time.monotonic() - arrival)) - stamp for arrival, stamp, *_ in self.joint_states[-500:]]
        return float(np.percentile(arrivals, 99))

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    def velocity_commands(self, since: float = -np.inf):
        return [(t, m) for t, m in list(self.commands) if t >= since and m.mode == self.JointCommand.VELOCITY_MODE]

    def close(self) -> None:
        self.spinner.close()
