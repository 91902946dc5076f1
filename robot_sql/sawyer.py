"""The Rethink Sawyer's numbers, in one place.

Read from the robot's public description (sawyer_robot `sawyer_base.urdf.xacro`,
`named_poses.yaml`) and the Intera SDK; see /work/shared/reference/sawyer.md, sections
A, B, F and G. The MuJoCo model (sim/assets/sawyer.xml), the safety filter and the ROS
node all take their limits from here; tests check the MJCF against these arrays.
"""
from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = tuple(f"right_j{i}" for i in range(7))
# the links the joints move (right_l0 .. right_l6), for perturbations
LINK_NAMES: tuple[str, ...] = tuple(f"right_l{i}" for i in range(7))
BASE_FRAME = "base"
END_EFFECTOR_FRAME = "right_hand"


def _read_only(values) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    array.flags.writeable = False
    return array


# URDF <limit> of right_j0..right_j6 (rad, rad/s, Nm). right_j6 is +-4.7124 on the real arm
# (the Gazebo variant narrows it to +-3.14).
POSITION_LOWER = _read_only([-3.0503, -3.8095, -3.0426, -3.0439, -2.9761, -2.9761, -4.7124])
POSITION_UPPER = _read_only([3.0503, 2.2736, 3.0426, 3.0439, 2.9761, 2.9761, 4.7124])
VELOCITY_LIMITS = _read_only([1.74, 1.328, 1.957, 1.957, 3.485, 3.485, 4.545])
EFFORT_LIMITS = _read_only([80.0, 80.0, 40.0, 40.0, 9.0, 9.0, 9.0])
# rad/s^2, sawyer_simulator's acceleration_limits.yaml (reference E; Intera publishes none)
ACCELERATION_LIMITS = _read_only([10.0, 8.0, 10.0, 10.0, 12.0, 12.0, 12.0])

# named_poses.yaml (`Limb.move_to_neutral` goes to "neutral")
NAMED_POSES: dict[str, np.ndarray] = {
    "neutral": _read_only([0.00, -1.18, 0.00, 2.18, 0.00, 0.57, 3.3161]),
    "shipping": _read_only([0.00, -1.57, 0.00, 2.79, 0.00, -2.79, 3.3161]),
}

# right_hand is fixed to right_l6: xyz 0 0 0.0245, rpy 0 0 1.570796 (URDF joint right_hand)
RIGHT_HAND_OFFSET = _read_only([0.0, 0.0, 0.0245])
RIGHT_HAND_RPY = _read_only([0.0, 0.0, 1.570796])
# right_hand in `base` at the neutral pose (reference C), tool z pointing down
NEUTRAL_RIGHT_HAND_POSITION = _read_only([0.4496, 0.1603, 0.2158])

# Intera: velocity/torque commands older than this make the controller hold position
COMMAND_TIMEOUT_S = 0.2
# Intera: speed ratio of position moves (`set_speed_ratio`, `move_to_neutral(speed=0.3)`)
DEFAULT_SPEED_RATIO = 0.3
JOINT_STATE_RATE_HZ = 100.0

# Rethink electric gripper: each finger travels 0 .. 0.020833 m (MAX_POSITION 0.041667 m apart)
GRIPPER_FINGER_TRAVEL = 0.020833


def named_pose(name: str) -> np.ndarray:
    """The joint angles of a named pose; a clear error for unknown names."""
    try:
        return NAMED_POSES[name].copy()
    except KeyError:
        raise ValueError(f"unknown named pose {name!r}; known: {sorted(NAMED_POSES)}") from None
