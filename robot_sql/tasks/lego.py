"""The Lego stacking task's geometry: a 2x4 brick held in the gripper is seated on a fixed one.

Sizes are a standard 2x4 brick (31.8 x 15.8 x 9.6 mm body, studs 4.8 mm wide and 1.7 mm tall
on an 8 mm pitch). Frames: a brick's frame is at the centre of its body (studs excluded),
x along its length, z up through the studs. The held brick sits between the fingertips,
its length along right_hand x, its studs towards the wrist.

The brick is seated when the held brick's underside rests on the fixed brick's top with the
two bodies aligned: the held brick's frame is the fixed brick's frame raised by one brick
height. In the simulator the studs are drawn but do not collide (the bodies do), so "seated"
is exactly this pose; on the real arm it is where the studs have entered the tubes.
"""
from __future__ import annotations

import numpy as np

from robot_sql.tasks.poses import Pose, compose, inverse, quat_from_axis_angle

BRICK_SIZE = np.array([0.0318, 0.0158, 0.0096])  # length, width, body height (m)
STUD_RADIUS = 0.0024
STUD_HEIGHT = 0.0017
STUD_PITCH = 0.008
STUD_GRID = (4, 2)  # studs along length, along width

# the held brick in right_hand: 11.48 cm along the tool axis, turned over (studs up when tool z is down)
HELD_BRICK_IN_HAND: Pose = (np.array([0.0, 0.0, 0.1148]), np.array([0.0, 1.0, 0.0, 0.0]))


def stud_positions() -> np.ndarray:
    """Stud centres in the brick frame, shape (8, 3)."""
    xs = (np.arange(STUD_GRID[0]) - (STUD_GRID[0] - 1) / 2) * STUD_PITCH
    ys = (np.arange(STUD_GRID[1]) - (STUD_GRID[1] - 1) / 2) * STUD_PITCH
    z = BRICK_SIZE[2] / 2 + STUD_HEIGHT / 2
    return np.array([[x, y, z] for x in xs for y in ys])


def seated_brick_pose(fixed_brick: Pose) -> Pose:
    """Where the held brick sits once seated on `fixed_brick` (both in `base`)."""
    return compose(fixed_brick, (np.array([0.0, 0.0, BRICK_SIZE[2]]), np.array([1.0, 0.0, 0.0, 0.0])))


def seated_hand_pose(fixed_brick: Pose) -> Pose:
    """The right_hand pose (in `base`) that seats the held brick on `fixed_brick`: the task's target."""
    return compose(seated_brick_pose(fixed_brick), inverse(HELD_BRICK_IN_HAND))


def fixed_brick_pose(x: float, y: float, yaw: float, table_height: float) -> Pose:
    """A brick lying on a table top at height `table_height`, turned `yaw` rad about z."""
    return np.array([x, y, table_height + BRICK_SIZE[2] / 2]), quat_from_axis_angle([0, 0, 1], yaw)
