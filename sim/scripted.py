"""A scripted controller for the simulated arm: damped least-squares (DLS) inverse kinematics.

    joint velocity = J^T (J J^T + damping^2 I)^-1 (gain * pose error)

with J the 6 x 7 Jacobian of right_hand (position and rotation) from the MuJoCo model and the
pose error from robot_sql.tasks.poses. It checks the tasks (a controller that knows the
target must succeed) and drives demo episodes for `robot-sql render`.
"""
from __future__ import annotations

import mujoco
import numpy as np

from robot_sql import sawyer
from robot_sql.robot import clip_position
from robot_sql.sim.sawyer import MujocoSawyer
from robot_sql.tasks.poses import Pose, pose_error


class DLSController:
    def __init__(self, robot: MujocoSawyer, gain: float = 2.0, damping: float = 0.05):
        self.robot = robot
        self.gain = gain
        self.damping = damping
        self._hand = robot.model.site(sawyer.END_EFFECTOR_FRAME).id
        self._dofs = np.array([robot.model.joint(name).dofadr[0] for name in sawyer.JOINT_NAMES])
        self._jacp = np.zeros((3, robot.model.nv))
        self._jacr = np.zeros((3, robot.model.nv))

    def joint_velocity(self, target: Pose) -> np.ndarray:
        """Joint velocities (rad/s) that move right_hand towards `target`."""
        position_error, rotation_error = pose_error(self.robot.ee_pose(), target)
        mujoco.mj_jacSite(self.robot.model, self.robot.data, self._jacp, self._jacr, self._hand)
        jacobian = np.vstack([self._jacp, self._jacr])[:, self._dofs]
        twist = self.gain * np.concatenate([position_error, rotation_error])
        damped = jacobian @ jacobian.T + self.damping**2 * np.eye(6)
        return jacobian.T @ np.linalg.solve(damped, twist)

    def action(self, target: Pose, velocity_fraction: float) -> np.ndarray:
        """The same as a normalised env action in [-1, 1]^7 (robot_sql/tasks/pose_task.py)."""
        scaled = self.joint_velocity(target) / (velocity_fraction * sawyer.VELOCITY_LIMITS)
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def joints_reaching(robot: MujocoSawyer, pose: Pose, iterations: int = 60) -> np.ndarray:
    """Joint angles, from the arm's present ones, that put right_hand at `pose`: DLS steps on the
    kinematics alone (no physics, no time), for placing the arm at an episode's start. The arm is
    left at rest there."""
    controller = DLSController(robot, gain=1.0)  # gain 1: each step aims at the whole error
    joints = robot.joint_positions()
    for _ in range(iterations):
        joints = clip_position(joints + controller.joint_velocity(pose))
        robot.reset(joints)
    return joints


class ScriptedPolicy:
    """Drives a Sawyer env (sim/envs.py) to its target with the DLS controller. With an
    `approach_height`, it first goes that far above the target (along base z) and comes
    straight down once there, as a brick must be lowered onto studs."""

    def __init__(self, env, approach_height: float = 0.0, approach_tolerance: float = 0.005):
        self.env = env
        self.controller = DLSController(env.robot)
        self.approach_height = approach_height
        self.approach_tolerance = approach_tolerance
        self.aim: Pose | None = None
        self.approached = False

    def reset(self, aim: Pose | None = None) -> None:
        """Start a new episode aiming at `aim` (default: the env's target)."""
        self.aim = aim
        self.approached = self.approach_height == 0.0

    def __call__(self) -> np.ndarray:
        target = self.aim if self.aim is not None else self.env.target
        if not self.approached:
            above = (target[0] + np.array([0.0, 0.0, self.approach_height]), target[1])
            if np.linalg.norm(pose_error(self.env.robot.ee_pose(), above)[0]) > self.approach_tolerance:
                return self.controller.action(above, self.env.velocity_fraction)
            self.approached = True
        return self.controller.action(target, self.env.velocity_fraction)
