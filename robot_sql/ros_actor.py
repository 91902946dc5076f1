"""The actor node: the actor loop (robot_sql/actor.py) on a Sawyer reached through ROS 2.

    robot-sql actor-node --params-file ros_ws/src/robot_sql_ros/config/sim.yaml
    ros2 run robot_sql_ros actor_node --ros-args --params-file .../real_sawyer.yaml
    ros2 launch robot_sql_ros sim.launch.py        (with the MuJoCo driver)

Subscribes /robot/joint_states, /robot/limb/right/endpoint_state, the end-effector target
(/robot_sql/target_pose, geometry_msgs/PoseStamped in `base`) and the e-stop
(/robot_sql/estop, std_msgs/Bool: true stops, false rearms); publishes
intera_core_msgs/JointCommand in velocity mode on /robot/limb/right/joint_command, once per
control tick, computed on the joint state that opened the tick. Every command passes the
safety filter (robot_sql/safety.py); episodes start with a position move to the start pose;
reward and success come from robot_sql/tasks/pose_task.py, exactly as in the simulator.
Transitions go to the learner and weights come back through the actor's own link; the
actor's control channel (panel: status, e-stop, rearm) works as for any actor.

Threads: an rclpy executor stores incoming messages (robot_sql/ros_robot.py); the actor loop
runs in the main thread and never waits on the network.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

import click
import gymnasium
import numpy as np
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from robot_sql import sawyer
from robot_sql.config import Settings
from robot_sql.robot import finite_joint_vector
from robot_sql.safety import SAWYER_WORKSPACE
from robot_sql.service_settings import ActorSettings
from robot_sql.tasks.pose_task import ACTION_SIZE, OBSERVATION_SIZE, PoseTask, SuccessTimer, action_to_velocity, observation

log = logging.getLogger("robot_sql.actor_node")

ESTOP_TOPIC = "/robot_sql/estop"
NODE_NAME = "robot_sql_actor"
SWITCH_INTERVAL_S = 0.0005
RESET_TO_ENABLE_S = 0.2  # rearm: from /robot/set_super_reset to /robot/set_super_enable
OUTAGE_WAIT_S = 1.0  # no fresh robot state: one env step waits this long for it (and holds)


def _node_actor_defaults() -> ActorSettings:
    # the env's step waits for the robot's joint states: the loop must not pace itself on top
    return ActorSettings(env="SawyerReach-v0", control_rate_hz=20.0, paced=False)


class ActorNodeSettings(Settings):
    """Parameters of the actor node (ROS parameters of the same names; env prefix ROBOT_SQL_ACTOR_NODE_)."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_ACTOR_NODE_", env_nested_delimiter="__", extra="forbid")

    # learner, control channel, control rate; actor.env names the task (SawyerReach-v0 or
    # SawyerLegoStack-v0): its tolerances and reward are used here, its sizes by the learner
    actor: ActorSettings = Field(default_factory=_node_actor_defaults)
    speed_fraction: float = Field(0.3, gt=0, le=1.0)  # safety cap: fraction of the joint velocity limits
    velocity_fraction: float = Field(0.3, gt=0, le=1.0)  # action scale, as in the simulator's envs
    workspace_low: list[float] = list(SAWYER_WORKSPACE[0])  # end-effector box in base (m)
    workspace_high: list[float] = list(SAWYER_WORKSPACE[1])
    slowdown_margin_rad: float = Field(0.15, gt=0)
    stale_after_s: float = Field(0.1, gt=0, le=0.5)  # joint state older than this (two control periods): hold
    joint_state_rate_hz: float = Field(sawyer.JOINT_STATE_RATE_HZ, gt=0)
    start_pose: list[float] = Field(default_factory=lambda: sawyer.named_pose("neutral").tolist())
    reset_timeout_s: float = Field(15.0, gt=0)
    episode_seconds: float = Field(10.0, gt=0)
    forward_estop: bool = True  # also assert the robot's own stop (/robot/set_super_stop)
    startup_timeout_s: float = Field(10.0, gt=0)  # wait this long for the robot's first states

    @field_validator("start_pose")
    @classmethod
    def _seven_angles(cls, pose: list[float]) -> list[float]:
        return finite_joint_vector(pose, "start_pose").tolist()

    @model_validator(mode="after")
    def _check(self) -> "ActorNodeSettings":
        if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
            raise ValueError("workspace_low and workspace_high need 3 values each (x, y, z in m)")
        if not self.actor.control_bind:
            raise ValueError("actor.control_bind is required: it is the panel's e-stop path to this node")
        if self.actor.paced:
            raise ValueError("actor.paced must be false: the node's steps are paced by the robot's joint states")
        if self.actor.control_rate_hz <= 1.0 / sawyer.COMMAND_TIMEOUT_S:
            raise ValueError(f"actor.control_rate_hz must exceed {1.0 / sawyer.COMMAND_TIMEOUT_S} Hz (the command timeout)")
        pose_task(self.actor.env)
        return self


def pose_task(env_id: str) -> PoseTask:
    """The task of a Sawyer pose env (tolerances, reward), scored here as the simulator scores it."""
    import robot_sql  # noqa: F401  (registers the envs)
    from gymnasium.envs.registration import load_env_creator

    from robot_sql.sim.envs import SawyerPoseEnv

    try:
        env_class = load_env_creator(gymnasium.spec(env_id).entry_point)
    except gymnasium.error.Error as error:
        raise ValueError(f"actor.env: {error}") from None
    if not (isinstance(env_class, type) and issubclass(env_class, SawyerPoseEnv)):
        raise ValueError(f"actor.env must be a Sawyer pose task (SawyerReach-v0, SawyerLegoStack-v0), got {env_id!r}")
    return env_class.task


class RobotPoseEnv(gymnasium.Env):
    """The pose-reaching task on a robot that is not simulated: targets come from outside
    (the target topic) and an episode starts with a position move to the start pose. Same
    observation, action, reward and success as sim/envs.py."""

    def __init__(self, robot, task: PoseTask, control_hz: float, velocity_fraction: float,
                 episode_seconds: float, start_pose, reset_timeout: float):
        self.robot = robot  # GuardedRobot around RosSawyer: `hold()` from the actor goes through it
        self.task, self.control_hz, self.velocity_fraction = task, control_hz, velocity_fraction
        self.max_steps = int(round(episode_seconds * control_hz))
        self.start_pose = np.asarray(start_pose, dtype=np.float64)
        self.reset_timeout = reset_timeout
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBSERVATION_SIZE,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_SIZE,), np.float32)
        self.success = SuccessTimer(task.hold_time)
        self._steps = 0

    @property
    def target(self):
        """The latest accepted target (an attribute, as on the simulated envs); without one, where
        the hand is (staying put is then optimal, and no episode succeeds)."""
        return self.robot.target() or self.robot.ee_pose()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if not self.robot.move_to(self.start_pose, timeout=self.reset_timeout):
            log.warning("episode reset: the start pose was not reached (e-stop, stale state or timeout); holding")
            self.robot.hold()
        self.success.reset()
        self._steps = 0
        return self._observation(), {}

    def step(self, action):
        decision = self.robot.send_velocity(action_to_velocity(action, self.velocity_fraction))
        self.robot.advance(1.0 / self.control_hz)
        self._steps += 1
        outage = self.robot.state_age() > self.robot.safety.limits.stale_after
        if outage:  # the robot went quiet: hold, and wait for it here rather than record stale steps
            self.robot.hold()
            self.robot.wait_for_fresh_state(OUTAGE_WAIT_S)
        hand, target = self.robot.ee_pose(), self.target
        reward = self.task.reward(hand, target)
        reached = self.robot.target() is not None and self.task.within_tolerance(hand, target)
        succeeded = self.success.update(reached, 1.0 / self.control_hz)
        truncated = (self._steps >= self.max_steps or outage) and not succeeded  # after an outage: a fresh episode
        position_error, orientation_error = self.task.errors(hand, target)
        info = {"position_error": position_error, "orientation_error": orientation_error,
                "is_success": succeeded, "safety": decision.reason}
        return self._observation(), reward, succeeded, truncated, info

    def _observation(self) -> np.ndarray:
        robot = self.robot
        return observation(robot.joint_positions(), robot.joint_velocities(), robot.ee_pose(), self.target)


class ActorNode:
    """Wires the ROS side (node, RosSawyer, e-stop topic) to an `Actor` over a `RobotPoseEnv`."""

    def __init__(self, node, settings: ActorNodeSettings):
        from std_msgs.msg import Bool, Empty

        from robot_sql.actor import Actor
        from robot_sql.kinematics import SawyerKinematics
        from robot_sql.ros_robot import RosSawyer
        from robot_sql.safety import GuardedRobot, SafetyFilter, SafetyLimits

        self.node, self.settings = node, settings
        limits = SafetyLimits.sawyer(settings.speed_fraction, settings.workspace_low, settings.workspace_high,
                                     slowdown_margin=settings.slowdown_margin_rad, stale_after=settings.stale_after_s)
        self.ros_robot = RosSawyer(node, settings.workspace_low, settings.workspace_high, settings.stale_after_s,
                                   settings.joint_state_rate_hz)
        self.robot = GuardedRobot(self.ros_robot, SafetyFilter(limits), SawyerKinematics())
        self.env = RobotPoseEnv(self.robot, pose_task(settings.actor.env), settings.actor.control_rate_hz,
                                settings.velocity_fraction, settings.episode_seconds, settings.start_pose,
                                settings.reset_timeout_s)
        self.actor = Actor(self.env, settings.actor)
        self.Empty, self.Bool = Empty, Bool
        self.super_stop_pub = node.create_publisher(Empty, "/robot/set_super_stop", 10)
        self.super_reset_pub = node.create_publisher(Empty, "/robot/set_super_reset", 10)
        self.super_enable_pub = node.create_publisher(Bool, "/robot/set_super_enable", 10)
        node.create_subscription(Bool, ESTOP_TOPIC, self.on_estop, 10)

    def on_estop(self, message) -> None:
        """Executor thread: hold now (not at the next tick), then tell the loop."""
        if message.data:
            self.robot.estop()
            if self.settings.forward_estop:
                self.super_stop_pub.publish(self.Empty())
            log.warning("E-STOP from %s: holding", ESTOP_TOPIC)
            self.actor.request("estop")
        elif self.settings.forward_estop:
            # Intera takes enable only once the stop is cleared, and two topics keep no order
            # between them: reset now, enable a moment later, then resume
            self.super_reset_pub.publish(self.Empty())

            def enable_and_rearm():
                self.node.destroy_timer(timer)
                self.super_enable_pub.publish(self.Bool(data=True))
                self._rearm()

            timer = self.node.create_timer(RESET_TO_ENABLE_S, enable_and_rearm)
        else:
            self._rearm()

    def _rearm(self) -> None:
        self.robot.rearm()
        log.info("rearmed from %s", ESTOP_TOPIC)
        self.actor.request("rearm")

    def run(self) -> None:
        if not self.ros_robot.wait_for_state(self.settings.startup_timeout_s):
            raise click.ClickException(
                f"no joint states and endpoint state from the robot within {self.settings.startup_timeout_s} s: "
                "is the driver (or ros1_bridge) running, in the same ROS_DOMAIN_ID?")
        log.info("%s: robot state arriving; learner %s, control channel %s, %.0f Hz",
                 self.actor.name, self.settings.actor.learner, self.settings.actor.control_bind,
                 self.settings.actor.control_rate_hz)
        self.actor.run()


def serve(argv: list[str], stop_after: float | None = None) -> ActorNode:
    """Run the node until SIGINT/SIGTERM (or for `stop_after` s); `argv` may carry ROS arguments."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # stopped while starting: just leave
        signal.signal(signum, lambda *_: sys.exit(0))
    import rclpy
    import torch
    from rclpy.signals import SignalHandlerOptions

    from robot_sql.ros_env import Spinner, declare_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)  # a small policy: threads only cost latency
    # the control loop shares the interpreter with the executor and network threads: when it
    # wakes on a joint state, it should get the GIL within a fraction of a millisecond, not 5 ms
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)  # our handlers stop the loop first
    spinner = Spinner(rclpy.create_node(NODE_NAME))
    try:
        actor_node = ActorNode(spinner.node, declare_settings(spinner.node, ActorNodeSettings))
        stopping = actor_node.actor.link.stopping
        for signum in (signal.SIGINT, signal.SIGTERM):  # running: the loop stops, holds the arm, cleans up
            signal.signal(signum, lambda *_: stopping.set())
        if stop_after is not None:
            timer = threading.Timer(stop_after, stopping.set)
            timer.daemon = True
            timer.start()
        actor_node.run()
        actor_node.robot.hold()
        latencies = np.asarray(actor_node.ros_robot.latencies or [np.nan]) * 1000
        log.info("%s: stopped after %d steps; state->command latency p50 %.2f ms p99 %.2f ms; safety decisions %s; "
                 "dropped messages %s", actor_node.actor.name, actor_node.actor.steps, np.percentile(latencies, 50),
                 np.percentile(latencies, 99), actor_node.robot.counts, dict(actor_node.ros_robot.rejected))
    finally:
        spinner.close()
    return actor_node


def run_node(argv: list[str]) -> int:
    serve(argv)
    return 0


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.option("--params-file", type=click.Path(exists=True, dir_okay=False),
              help="ROS 2 parameter file (ros_ws/src/robot_sql_ros/config/sim.yaml or real_sawyer.yaml).")
@click.argument("ros_args", nargs=-1, type=click.UNPROCESSED)
def actor_node_command(params_file: str | None, ros_args: tuple[str, ...]) -> None:
    """Run the actor on a Sawyer over ROS 2 (the real arm via ros1_bridge, or `robot-sql sim-robot`).

    Extra arguments go to ROS, e.g. `--ros-args -p actor.learner:=10.0.0.5:5555`.
    """
    from robot_sql.ros_env import require_messages, ros_arguments

    require_messages()
    raise SystemExit(run_node(["robot-sql", *ros_arguments(params_file, ros_args)]))
