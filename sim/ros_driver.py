"""`robot-sql sim-robot`: the MuJoCo Sawyer behind the same ROS 2 topics as the real arm.

It speaks what Intera speaks (reference/sawyer.md, F and G), so a node cannot tell it from
the hardware:
    publishes  /robot/joint_states                  sensor_msgs/JointState, 100 Hz
               /robot/limb/right/endpoint_state     intera_core_msgs/EndpointState, 100 Hz
               /robot/state                         intera_core_msgs/RobotAssemblyState, 10 Hz
    takes      /robot/limb/right/joint_command      intera_core_msgs/JointCommand (velocity, position)
               /robot/limb/right/joint_command_timeout  std_msgs/Float64 (s, clamped to 0..1)
               /robot/set_super_enable              std_msgs/Bool
               /robot/set_super_stop                std_msgs/Empty (e-stop: hold, disable)
               /robot/set_super_reset               std_msgs/Empty (clear the stop; enable again to move)
Velocity commands expire after the command timeout (0.2 s) and the arm holds its angles, as on
the real controller. Simulator-only services:
               /sim/reset                           std_srvs/Trigger: arm at rest in the start pose
               /sim/apply_wrench                    robot_sql_msgs/ApplyWrench: push a link
The physics runs in real time: each 100 Hz tick integrates the wall time that has passed.
In the Lego scene it also publishes the task's target on /robot_sql/target_pose (1 Hz), the
hand pose that seats the held brick on the fixed one, standing in for the real cell's perception.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from typing import Literal

import click
import mujoco
import numpy as np
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from robot_sql import sawyer
from robot_sql.config import Settings
from robot_sql.perturbation import MAX_WRENCH_DURATION_S, MAX_WRENCH_FORCE_N
from robot_sql.robot import finite_joint_vector
from robot_sql.ros_robot import TOPICS
from robot_sql.sim.scenes import brick_grip_opening, build_model, table_height
from robot_sql.tasks import lego

log = logging.getLogger("robot_sql.sim_robot")

JOINT_STATE_NAMES = ("head_pan",) + sawyer.JOINT_NAMES  # the real arm reports its head too
STATE_EVERY_N_TICKS = 10
MAX_CATCH_UP_S = 0.1  # after a stall, skip ahead instead of running the physics in a burst


class SimRobotSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_SIM_ROBOT_", env_nested_delimiter="__", extra="forbid")

    scene: Literal["arm", "lego"] = "arm"
    publish_rate_hz: float = Field(sawyer.JOINT_STATE_RATE_HZ, gt=0, le=800)
    command_timeout_s: float = Field(sawyer.COMMAND_TIMEOUT_S, ge=0, le=1.0)
    speed_ratio: float = Field(sawyer.DEFAULT_SPEED_RATIO, gt=0, le=1.0)
    start_pose: list[float] = Field(default_factory=lambda: sawyer.named_pose("neutral").tolist())
    start_enabled: bool = True
    # Lego scene: the fixed brick on the table (x, y in m, yaw in rad), and how often the
    # driver publishes the hand pose that seats the held brick on it as the target (0: never)
    brick_pose: list[float] = [0.62, 0.12, math.pi / 2]
    target_rate_hz: float = Field(1.0, ge=0)

    @field_validator("start_pose")
    @classmethod
    def _seven_finite_angles(cls, pose: list[float]) -> list[float]:
        return finite_joint_vector(pose, "start_pose").tolist()

    @field_validator("brick_pose")
    @classmethod
    def _x_y_yaw(cls, pose: list[float]) -> list[float]:
        if len(pose) != 3 or not all(math.isfinite(value) for value in pose):
            raise ValueError(f"brick_pose needs 3 finite values (x, y in m, yaw in rad), got {pose}")
        return pose


def command_vector(names, values, what: str) -> np.ndarray:
    """The 7 arm-joint values of a JointCommand field, in our joint order; ValueError if unusable."""
    names = list(names)
    if sorted(names) != sorted(sawyer.JOINT_NAMES):
        raise ValueError(f"joint names must be the 7 arm joints {list(sawyer.JOINT_NAMES)}, got {names}")
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(names),):
        raise ValueError(f"{what} has {values.size} values for {len(names)} names")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or inf")
    return values[[names.index(name) for name in sawyer.JOINT_NAMES]]


class SimRobotNode:
    def __init__(self, node, settings: SimRobotSettings):
        from geometry_msgs.msg import PoseStamped
        from intera_core_msgs.msg import EndpointState, JointCommand, RobotAssemblyState
        from robot_sql_msgs.srv import ApplyWrench
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Empty, Float64
        from std_srvs.srv import Trigger

        from robot_sql.sim.sawyer import MujocoSawyer

        self.node, self.settings = node, settings
        self.robot = MujocoSawyer(build_model(settings.scene), speed_ratio=settings.speed_ratio,
                                  command_timeout=settings.command_timeout_s)
        self.start_pose = np.asarray(settings.start_pose, dtype=np.float64)
        self.reset_scene()
        self.enabled, self.stopped = settings.start_enabled, False
        self.rejected_commands = 0
        self._dofs = np.array([self.robot.model.joint(n).dofadr[0] for n in sawyer.JOINT_NAMES])
        self._hand = self.robot.model.site(sawyer.END_EFFECTOR_FRAME).id
        self._jacobian = np.zeros((2, 3, self.robot.model.nv))
        self._ticks = 0
        self._anchor()

        self.JointState, self.EndpointState, self.RobotAssemblyState = JointState, EndpointState, RobotAssemblyState
        self.JointCommand = JointCommand
        self.joint_state_pub = node.create_publisher(JointState, "/robot/joint_states", 10)
        self.endpoint_pub = node.create_publisher(EndpointState, "/robot/limb/right/endpoint_state", 10)
        self.state_pub = node.create_publisher(RobotAssemblyState, "/robot/state", 10)
        node.create_subscription(JointCommand, "/robot/limb/right/joint_command", self.on_command, 10)
        node.create_subscription(Float64, "/robot/limb/right/joint_command_timeout", self.on_timeout, 10)
        node.create_subscription(Bool, "/robot/set_super_enable", self.on_enable, 10)
        node.create_subscription(Empty, "/robot/set_super_stop", self.on_stop, 10)
        node.create_subscription(Empty, "/robot/set_super_reset", self.on_reset_stop, 10)
        node.create_service(Trigger, "/sim/reset", self.on_sim_reset)
        node.create_service(ApplyWrench, "/sim/apply_wrench", self.on_apply_wrench)
        node.create_timer(1.0 / settings.publish_rate_hz, self.tick)
        if settings.scene == "lego" and settings.target_rate_hz > 0:
            self.PoseStamped = PoseStamped
            self.target_pub = node.create_publisher(PoseStamped, TOPICS["target_pose"], 10)
            node.create_timer(1.0 / settings.target_rate_hz, self.publish_target)
        log.info("sim-robot: scene %s, %s, publishing at %.0f Hz",
                 settings.scene, "enabled" if self.enabled else "disabled", settings.publish_rate_hz)

    # ---- real time -----------------------------------------------------------------------
    def _anchor(self) -> None:
        self._wall_start, self._sim_start = time.monotonic(), self.robot.time

    def tick(self) -> None:
        behind = self._sim_start + (time.monotonic() - self._wall_start) - self.robot.time
        if behind > MAX_CATCH_UP_S:
            self._anchor()
            behind = self.robot.timestep
        if behind >= self.robot.timestep:
            self.robot.advance(behind)
        self.publish_state()

    def publish_state(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        data = self.robot.data
        joints = self.JointState()
        joints.header.stamp = stamp
        joints.name = list(JOINT_STATE_NAMES)
        joints.position = [0.0] + self.robot.joint_positions().tolist()
        joints.velocity = [0.0] + self.robot.joint_velocities().tolist()
        joints.effort = [0.0] + data.qfrc_actuator[self._dofs].tolist()
        self.joint_state_pub.publish(joints)

        position, quat = self.robot.ee_pose()
        mujoco.mj_jacSite(self.robot.model, data, self._jacobian[0], self._jacobian[1], self._hand)
        linear, angular = self._jacobian @ data.qvel
        endpoint = self.EndpointState()
        endpoint.header.stamp = stamp
        endpoint.header.frame_id = sawyer.BASE_FRAME
        pose = endpoint.pose
        pose.position.x, pose.position.y, pose.position.z = position.tolist()
        pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = quat.tolist()
        twist = endpoint.twist
        twist.linear.x, twist.linear.y, twist.linear.z = linear.tolist()
        twist.angular.x, twist.angular.y, twist.angular.z = angular.tolist()
        endpoint.valid = True
        self.endpoint_pub.publish(endpoint)

        self._ticks += 1
        if self._ticks % STATE_EVERY_N_TICKS == 1:
            state = self.RobotAssemblyState(homed=True, ready=self.enabled and not self.stopped,
                                            enabled=self.enabled, stopped=self.stopped)
            state.estop_button = state.ESTOP_BUTTON_UNKNOWN if self.stopped else state.ESTOP_BUTTON_UNPRESSED
            state.estop_source = state.ESTOP_SOURCE_ENGINE if self.stopped else state.ESTOP_SOURCE_NONE
            self.state_pub.publish(state)

    # ---- commands ------------------------------------------------------------------------
    def on_command(self, message) -> None:
        if not self.enabled or self.stopped:
            return  # a disabled or stopped arm ignores commands, as Intera does
        try:
            if message.mode == self.JointCommand.VELOCITY_MODE:
                self.robot.send_velocity(command_vector(message.names, message.velocity, "velocity"))
            elif message.mode == self.JointCommand.POSITION_MODE:
                self.robot.send_position(command_vector(message.names, message.position, "position"))
            else:
                raise ValueError(f"mode {message.mode} is not simulated (velocity and position are)")
        except ValueError as error:
            self.rejected_commands += 1
            self.robot.hold()
            log.warning("sim-robot: rejected joint command #%d: %s", self.rejected_commands, error)

    def on_timeout(self, message) -> None:
        if np.isfinite(message.data):
            self.robot.command_timeout = float(np.clip(message.data, 0.0, 1.0))

    def on_enable(self, message) -> None:
        if message.data and self.stopped:
            log.warning("sim-robot: enable refused while stopped (send /robot/set_super_reset first)")
            return
        self.enabled = bool(message.data)
        if not self.enabled:
            self.robot.hold()
        log.info("sim-robot: %s", "enabled" if self.enabled else "disabled")

    def on_stop(self, _message) -> None:
        self.robot.hold()
        self.stopped, self.enabled = True, False
        log.warning("sim-robot: STOPPED (set_super_stop)")

    def on_reset_stop(self, _message) -> None:
        self.stopped = False
        log.info("sim-robot: stop cleared; enable to move")

    # ---- simulator-only services ---------------------------------------------------------
    def reset_scene(self) -> None:
        """The arm at rest in the start pose; in the Lego scene, the gripper closed on the held
        brick and the fixed brick where the settings put it."""
        self.robot.reset(self.start_pose)
        if self.settings.scene == "lego":
            self.robot.set_gripper(brick_grip_opening())
            x, y, yaw = self.settings.brick_pose
            brick = self.robot.model.body("fixed_brick")
            brick.pos, brick.quat = lego.fixed_brick_pose(x, y, yaw, table_height(self.robot.model))
            mujoco.mj_forward(self.robot.model, self.robot.data)

    def publish_target(self) -> None:
        """Sim only: the Lego task's target, as a perception system would publish it for the real arm."""
        brick = self.robot.model.body("fixed_brick")
        position, quat = lego.seated_hand_pose((brick.pos.copy(), brick.quat.copy()))
        message = self.PoseStamped()
        message.header.stamp = self.node.get_clock().now().to_msg()
        message.header.frame_id = sawyer.BASE_FRAME
        message.pose.position.x, message.pose.position.y, message.pose.position.z = position.tolist()
        o = message.pose.orientation
        o.w, o.x, o.y, o.z = quat.tolist()
        self.target_pub.publish(message)

    def on_sim_reset(self, _request, response):
        self.reset_scene()
        self._anchor()
        response.success, response.message = True, "arm at rest in the start pose"
        log.info("sim-robot: scene reset")
        return response

    def on_apply_wrench(self, request, response):
        force = np.array([request.force.x, request.force.y, request.force.z])
        torque = np.array([request.torque.x, request.torque.y, request.torque.z])
        try:
            if np.linalg.norm(force) > MAX_WRENCH_FORCE_N or not 0 < request.duration <= MAX_WRENCH_DURATION_S:
                raise ValueError(f"at most {MAX_WRENCH_FORCE_N} N for at most {MAX_WRENCH_DURATION_S} s")
            self.robot.apply_wrench(request.link, force, torque, request.duration)
        except ValueError as error:
            response.success, response.message = False, str(error)
            return response
        response.success, response.message = True, f"pushing {request.link} for {request.duration} s"
        log.info("sim-robot: %s", response.message)
        return response


def run_node(argv: list[str]) -> int:
    """Run the driver until SIGINT/SIGTERM; `argv` may carry ROS arguments (--ros-args ...)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from robot_sql.ros_env import declare_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # our own handlers: rclpy's shut the context down under a waiting executor, which can raise
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("sawyer_sim")
    driver = SimRobotNode(node, declare_settings(node, SimRobotSettings))
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stopping.is_set():
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    log.info("sim-robot: stopped (%d joint commands rejected)", driver.rejected_commands)
    return 0


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.option("--params-file", type=click.Path(exists=True, dir_okay=False),
              help="ROS 2 parameter file (e.g. ros_ws/src/robot_sql_ros/config/sim.yaml).")
@click.argument("ros_args", nargs=-1, type=click.UNPROCESSED)
def sim_robot_command(params_file: str | None, ros_args: tuple[str, ...]) -> None:
    """Run the MuJoCo Sawyer behind the real arm's ROS 2 topics (Ctrl-C stops).

    Extra arguments go to ROS, e.g. `--ros-args -p scene:=lego`.
    """
    from robot_sql.ros_env import require_messages, ros_arguments

    require_messages()
    raise SystemExit(run_node(["robot-sql", *ros_arguments(params_file, ros_args)]))
