"""The small robot interface everything above the arm uses, in simulation and on the real arm.

`MujocoSawyer` (robot_sql.sim.sawyer) implements it in-process; the ROS driver implements it
over Intera's topics. Conventions shared by every implementation:

- joint vectors are float64 arrays ordered as `joint_names` (right_j0 .. right_j6);
- velocity commands are clipped to the velocity limits, position commands to the joint
  limits (never passed through); NaN or inf raises ValueError and the arm holds;
- velocity commands expire after the command timeout (0.2 s, as Intera): the arm then holds
  its current angles until the next command;
- `ee_pose()` is `right_hand` in the `base` frame: position (m) and unit quaternion (w, x, y, z);
- `advance(seconds)` lets robot time pass: the simulator integrates its physics, a real arm
  sleeps. A control loop written against it runs unchanged on both.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from robot_sql import sawyer

JointTarget = str | Sequence[float] | np.ndarray


@runtime_checkable
class Robot(Protocol):
    joint_names: tuple[str, ...]

    @property
    def time(self) -> float:
        """Robot time in seconds (simulated time in the simulator)."""

    def joint_positions(self) -> np.ndarray:
        """Joint angles (rad)."""

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (rad/s)."""

    def send_velocity(self, velocity: Sequence[float] | np.ndarray) -> None:
        """Velocity mode: track these joint velocities (rad/s) until the command times out."""

    def send_position(self, position: Sequence[float] | np.ndarray) -> None:
        """Position mode: move to these joint angles at the speed ratio, then hold them."""

    def hold(self) -> None:
        """Stop and hold the current joint angles."""

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """`right_hand` in `base`: (position xyz in m, quaternion wxyz)."""

    def move_to(self, target: JointTarget, timeout: float = 15.0, tolerance: float = 0.01) -> bool:
        """Move to joint angles or a named pose ("neutral") in position mode; True when reached."""

    def apply_wrench(self, link: str, force: Sequence[float], torque: Sequence[float], duration: float) -> None:
        """Perturbation: push `link` with a force (N) and torque (Nm), in `base` axes, for `duration` s."""

    def displace(self, delta: Sequence[float] | np.ndarray) -> None:
        """Perturbation: shift the joint angles by `delta` (rad); the arm holds the displaced angles."""

    def advance(self, seconds: float) -> None:
        """Let `seconds` of robot time pass."""


def finite_joint_vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    """A copy of a 7-joint command as float64; ValueError for a wrong shape or NaN/inf."""
    array = np.array(values, dtype=np.float64)
    if array.shape != (len(sawyer.JOINT_NAMES),):
        raise ValueError(f"{what} needs {len(sawyer.JOINT_NAMES)} values (one per joint), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or inf: {array.tolist()}")
    return array


def clip_velocity(velocity: Sequence[float] | np.ndarray) -> np.ndarray:
    """A checked velocity command clipped to the joint velocity limits."""
    checked = finite_joint_vector(velocity, "velocity command")
    return np.clip(checked, -sawyer.VELOCITY_LIMITS, sawyer.VELOCITY_LIMITS)


def clip_position(position: Sequence[float] | np.ndarray) -> np.ndarray:
    """A checked position command clipped to the joint limits."""
    checked = finite_joint_vector(position, "position command")
    return np.clip(checked, sawyer.POSITION_LOWER, sawyer.POSITION_UPPER)


def joint_target(target: JointTarget) -> np.ndarray:
    """Joint angles from a named pose or a vector, clipped to the joint limits."""
    if isinstance(target, str):
        return sawyer.named_pose(target)
    return clip_position(target)
