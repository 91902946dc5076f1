"""`RosSawyer`: the Robot interface (robot_sql/robot.py) over Intera's ROS 2 topics.

The same class drives the physical arm (through ros1_bridge) and the MuJoCo driver
(`robot-sql sim-robot`). Callbacks run in an rclpy executor thread and only store what
arrived; the control loop, in its own thread, reads that state and publishes commands.

- Robot time is the arrival time of joint states: `advance(seconds)` returns when the first
  joint state of the next control tick has arrived, so the loop computes its command on
  fresh state and publishes within about a millisecond of receipt. If none arrives
  `stale_after` s past the tick, it returns anyway: the safety filter then sees stale state.
- Every message is checked before it is used. A joint state without exactly one entry per
  arm joint, with mismatched lengths or NaN/inf, an invalid or non-finite endpoint state,
  and a target pose that is not finite, not a rotation, in another frame or outside the
  workspace box are dropped and counted, never stored.
- `hold()` publishes a position-mode command at the last known joint angles: the arm holds
  now, without waiting for the controller's own command timeout.
- Position moves and displacements are left to `GuardedRobot` (robot_sql/safety.py), which
  stops them on an e-stop; a wrench perturbation goes to the simulator's /sim/apply_wrench.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time

import numpy as np

from robot_sql import sawyer
from robot_sql.robot import clip_position, finite_joint_vector

log = logging.getLogger("robot_sql.ros_robot")

TOPICS = {
    "joint_states": "/robot/joint_states",
    "endpoint_state": "/robot/limb/right/endpoint_state",
    "joint_command": "/robot/limb/right/joint_command",
    "target_pose": "/robot_sql/target_pose",
}


class RosSawyer:
    joint_names = sawyer.JOINT_NAMES

    def __init__(self, node, workspace_low, workspace_high, stale_after: float,
                 joint_state_rate_hz: float = sawyer.JOINT_STATE_RATE_HZ, topics: dict[str, str] | None = None):
        from geometry_msgs.msg import PoseStamped
        from intera_core_msgs.msg import EndpointState, JointCommand
        from robot_sql_msgs.srv import ApplyWrench
        from sensor_msgs.msg import JointState

        topics = {**TOPICS, **(topics or {})}
        self.node = node
        self.workspace_low = np.asarray(workspace_low, dtype=np.float64)
        self.workspace_high = np.asarray(workspace_high, dtype=np.float64)
        self.stale_after = stale_after
        self.state_period = 1.0 / joint_state_rate_hz
        self.JointCommand = JointCommand
        self.rejected = collections.Counter()  # "topic: why" -> messages dropped
        # per velocity command: when it was published, and how long after the state it acts on arrived (s)
        self.command_times: collections.deque = collections.deque(maxlen=100000)
        self.latencies: collections.deque = collections.deque(maxlen=100000)
        self._changed = threading.Condition()
        self._q = self._dq = None
        self._joints_at = self._endpoint_at = -np.inf
        self._endpoint: tuple[np.ndarray, np.ndarray] | None = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None
        self._tick_state_at = -np.inf  # receipt time of the state the current tick acts on
        self._next_tick: float | None = None
        self.command_pub = node.create_publisher(JointCommand, topics["joint_command"], 10)
        node.create_subscription(JointState, topics["joint_states"], self._on_joint_state, 10)
        node.create_subscription(EndpointState, topics["endpoint_state"], self._on_endpoint_state, 10)
        node.create_subscription(PoseStamped, topics["target_pose"], self._on_target, 10)
        self._wrench_client = node.create_client(ApplyWrench, "/sim/apply_wrench")

    # ---- incoming (executor thread) ------------------------------------------------------
    def _reject(self, topic: str, why: str, detail: str = "") -> None:
        """Count a dropped message; log the 1st, 10th, 100th ... of each kind."""
        self.rejected[f"{topic}: {why}"] += 1
        count = self.rejected[f"{topic}: {why}"]
        if math.log10(count).is_integer():
            log.warning("dropped %s message #%d: %s%s", topic, count, why, f" ({detail})" if detail else "")

    def _on_joint_state(self, message) -> None:
        now = time.monotonic()
        names = list(message.name)
        if any(names.count(name) != 1 for name in sawyer.JOINT_NAMES):
            return self._reject("joint_states", "wrong joint names", f"needs each of right_j0..right_j6 once, got {names}")
        if len(message.position) != len(names) or len(message.velocity) not in (0, len(names)):
            return self._reject("joint_states", "lengths do not match the names")
        index = [names.index(name) for name in sawyer.JOINT_NAMES]
        q = np.asarray(message.position, dtype=np.float64)[index]
        dq = np.asarray(message.velocity, dtype=np.float64)[index] if len(message.velocity) else np.zeros(len(index))
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(dq))):
            return self._reject("joint_states", "NaN or inf")
        with self._changed:
            self._q, self._dq, self._joints_at = q, dq, now
            self._changed.notify_all()

    def _on_endpoint_state(self, message) -> None:
        pose = message.pose
        position = np.array([pose.position.x, pose.position.y, pose.position.z])
        quat = np.array([pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z])
        if not message.valid or not np.all(np.isfinite(position)) or not abs(np.linalg.norm(quat) - 1.0) < 1e-3:
            return self._reject("endpoint_state", "invalid, non-finite or not a unit quaternion")
        with self._changed:
            self._endpoint, self._endpoint_at = (position, quat), time.monotonic()

    def _on_target(self, message) -> None:
        pose = message.pose
        position = np.array([pose.position.x, pose.position.y, pose.position.z])
        quat = np.array([pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z])
        norm = np.linalg.norm(quat)
        if message.header.frame_id not in ("", sawyer.BASE_FRAME):
            self._reject("target_pose", f"frame is not {sawyer.BASE_FRAME!r}", repr(message.header.frame_id))
        elif not (np.all(np.isfinite(position)) and np.isfinite(norm) and abs(norm - 1.0) < 0.01):
            self._reject("target_pose", "non-finite position or not a unit quaternion")
        elif np.any(position < self.workspace_low) or np.any(position > self.workspace_high):
            self._reject("target_pose", "outside the workspace box", str(position.round(3).tolist()))
        else:
            with self._changed:
                self._target = (position, quat / norm)

    # ---- state (control-loop thread) -----------------------------------------------------
    @property
    def time(self) -> float:
        return time.monotonic()

    def wait_for_state(self, timeout: float) -> bool:
        """Block until joint states and the endpoint state have arrived (start-up)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            return self._changed.wait_for(lambda: self._q is not None and self._endpoint is not None,
                                          max(0.0, deadline - time.monotonic()))

    def wait_for_fresh_state(self, timeout: float) -> bool:
        """Block until joint and endpoint states are both younger than `stale_after` (or timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.state_age() <= self.stale_after, timeout)

    def state_age(self) -> float:
        """Seconds since the older of the last joint state and the last endpoint state."""
        return time.monotonic() - min(self._joints_at, self._endpoint_at)

    def joint_positions(self) -> np.ndarray:
        return self._q.copy() if self._q is not None else np.full(7, np.nan)

    def joint_velocities(self) -> np.ndarray:
        return self._dq.copy() if self._dq is not None else np.full(7, np.nan)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        if self._endpoint is None:
            return np.full(3, np.nan), np.array([np.nan] * 4)
        position, quat = self._endpoint
        return position.copy(), quat.copy()

    def target(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The latest accepted end-effector target (position, quaternion wxyz) in `base`, if any."""
        return self._target

    def advance(self, seconds: float) -> None:
        """Wait for the first joint state of the next tick, `seconds` after the previous tick."""
        now = time.monotonic()
        if self._next_tick is None or now - self._next_tick > seconds:
            self._next_tick = now  # first call, or we fell behind: start the schedule again
        self._next_tick += seconds
        due = self._next_tick - self.state_period / 2  # the state closest to the tick
        with self._changed:
            self._changed.wait_for(lambda: self._joints_at >= due,
                                   max(0.0, self._next_tick + self.stale_after - time.monotonic()))
            self._tick_state_at = self._joints_at

    # ---- commands ------------------------------------------------------------------------
    def _publish(self, mode: int, position=(), velocity=()) -> None:
        command = self.JointCommand(mode=mode, names=list(self.joint_names),
                                    position=[float(v) for v in position], velocity=[float(v) for v in velocity])
        command.header.stamp = self.node.get_clock().now().to_msg()
        self.command_pub.publish(command)

    def send_velocity(self, velocity) -> None:
        self._publish(self.JointCommand.VELOCITY_MODE, velocity=finite_joint_vector(velocity, "velocity command"))
        now = time.monotonic()
        self.command_times.append(now)
        self.latencies.append(now - self._tick_state_at)

    def send_position(self, position) -> None:
        self._publish(self.JointCommand.POSITION_MODE, position=clip_position(position))

    def hold(self) -> None:
        q = self._q
        if q is not None:  # never had a state: nothing was ever commanded, nothing to hold against
            self._publish(self.JointCommand.POSITION_MODE, position=q)

    def move_to(self, target, timeout: float = 15.0, tolerance: float = 0.01) -> bool:
        raise NotImplementedError("use GuardedRobot.move_to (robot_sql/safety.py), which checks the e-stop")

    def apply_wrench(self, link, force, torque, duration) -> None:
        """Only on the simulator, through its /sim/apply_wrench service; ValueError elsewhere."""
        from geometry_msgs.msg import Vector3

        if not self._wrench_client.service_is_ready():
            raise ValueError("no /sim/apply_wrench service: a wrench needs the simulator (sim-robot); "
                             "use a displacement on the real arm")
        request = self._wrench_client.srv_type.Request(link=link, duration=float(duration))
        request.force, request.torque = (Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2])) for v in (force, torque))
        future = self._wrench_client.call_async(request)  # answered in the executor thread
        deadline = time.monotonic() + 2.0
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not future.done() or not future.result().success:
            raise ValueError(f"/sim/apply_wrench failed: {future.result().message if future.done() else 'no reply'}")
