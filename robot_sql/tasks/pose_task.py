"""Reaching a target end-effector pose: the observation, the action, the reward and success.

Shared by the MuJoCo envs (sim/envs.py) and the real-arm actor, so both score the same way.
Everything here is a pure function of joint states and poses (`right_hand` in `base`).

Observation (float32, 23 values, in this order):

| slice   | what                                             | unit               |
|---------|--------------------------------------------------|--------------------|
| 0:7     | joint angles right_j0..right_j6                  | rad                |
| 7:14    | joint velocities / velocity limits               | 1 (in [-1, 1])     |
| 14:17   | right_hand position in base                      | m                  |
| 17:20   | target position - right_hand position (base), x ERROR_SCALE | 0.1 m      |
| 20:23   | rotation vector from right_hand's orientation to the target's (base), x ERROR_SCALE | 0.1 rad |

The two errors are scaled up so that they are of the order of the other inputs where
precision matters: in metres, 1 cm would be an input change of 0.01 beside joint angles of
order 1, and SQL on the reach task stayed at 0 % success (docs/sim.md, "What made it learn").

Action: 7 values in [-1, 1], joint velocity commands as a fraction of each joint's velocity
limit, scaled by `velocity_fraction` (default 0.3, Intera's default speed ratio).

Reward, with d = |position error| + orientation_weight * |orientation error| (metres; the
default weight 0.2 m/rad counts 3 degrees as 1 cm and 6 degrees as 2 cm, so that the orientation
tolerance weighs about as much as the position tolerance):

    r = -d / distance_scale - (1 - exp(-(d / precision_scale)^2))

It is 0 only on the target and negative elsewhere (so ending an episode by success is never
worse than staying): the first term pulls from afar (-1 per 10 cm by default), the second adds
up to 1 of extra reward in the last centimetre or so, where precision matters.

Success: position error <= position_tolerance and orientation error <= orientation_tolerance,
continuously for hold_time seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_sql import sawyer
from robot_sql.tasks.poses import Pose, pose_error

OBSERVATION_SIZE = 23
ACTION_SIZE = len(sawyer.JOINT_NAMES)
ERROR_SCALE = 10.0  # per m and per rad: the pose errors in the observation read in tenths


def observation(joint_positions: np.ndarray, joint_velocities: np.ndarray, hand: Pose, target: Pose) -> np.ndarray:
    position_error, rotation_error = pose_error(hand, target)
    return np.concatenate([
        joint_positions, joint_velocities / sawyer.VELOCITY_LIMITS, hand[0],
        ERROR_SCALE * position_error, ERROR_SCALE * rotation_error,
    ]).astype(np.float32)


def action_to_velocity(action: np.ndarray, velocity_fraction: float) -> np.ndarray:
    """Joint velocity command (rad/s) for a normalised action; values outside [-1, 1] are clipped."""
    return np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0) * velocity_fraction * sawyer.VELOCITY_LIMITS


@dataclass(frozen=True)
class PoseTask:
    position_tolerance: float = 0.003  # m
    orientation_tolerance: float = np.deg2rad(3.0)  # rad
    hold_time: float = 0.25  # s
    orientation_weight: float = 0.2  # m per rad
    distance_scale: float = 0.1  # m
    precision_scale: float = 0.01  # m

    def errors(self, hand: Pose, target: Pose) -> tuple[float, float]:
        """(position error in m, orientation error in rad)."""
        position_error, rotation_error = pose_error(hand, target)
        return float(np.linalg.norm(position_error)), float(np.linalg.norm(rotation_error))

    def reward(self, hand: Pose, target: Pose) -> float:
        position_error, orientation_error = self.errors(hand, target)
        distance = position_error + self.orientation_weight * orientation_error
        return float(-distance / self.distance_scale - (1.0 - np.exp(-(distance / self.precision_scale) ** 2)))

    def within_tolerance(self, hand: Pose, target: Pose) -> bool:
        position_error, orientation_error = self.errors(hand, target)
        return position_error <= self.position_tolerance and orientation_error <= self.orientation_tolerance


class SuccessTimer:
    """Success once the pose has stayed within tolerance for the task's hold time."""

    def __init__(self, hold_time: float):
        self.hold_time = hold_time
        self.held_for = 0.0

    def reset(self) -> None:
        self.held_for = 0.0

    def update(self, within_tolerance: bool, elapsed: float) -> bool:
        self.held_for = self.held_for + elapsed if within_tolerance else 0.0
        return self.held_for >= self.hold_time - 1e-9
