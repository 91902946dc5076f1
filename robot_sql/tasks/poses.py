"""Rigid-body pose arithmetic in plain numpy: quaternions are (w, x, y, z), unit length.

A pose is (position, quaternion) of a frame in a parent frame; `compose(a, b)` is the pose
of b's frame in a's parent when b is given in a.
"""
from __future__ import annotations

import numpy as np

Pose = tuple[np.ndarray, np.ndarray]


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v rotated by q."""
    return quat_multiply(quat_multiply(q, np.array([0.0, *v])), quat_conjugate(q))[1:]


def quat_from_axis_angle(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    return np.array([np.cos(angle / 2), *(np.sin(angle / 2) * axis)])


def rotation_vector(q: np.ndarray) -> np.ndarray:
    """The axis * angle (rad, in [0, pi]) of the rotation q; q and -q give the same vector."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    sin_half = np.linalg.norm(q[1:])
    if sin_half < 1e-12:
        return 2.0 * q[1:]
    angle = 2.0 * np.arctan2(sin_half, q[0])
    return q[1:] / sin_half * angle


def compose(parent: Pose, child: Pose) -> Pose:
    """The pose `child` (given in `parent`'s frame) expressed in `parent`'s parent frame."""
    p_pos, p_quat = parent
    c_pos, c_quat = child
    return p_pos + quat_rotate(p_quat, c_pos), quat_multiply(p_quat, c_quat)


def inverse(pose: Pose) -> Pose:
    pos, quat = pose
    conj = quat_conjugate(quat)
    return -quat_rotate(conj, pos), conj


def pose_error(pose: Pose, target: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(target position - position, rotation vector taking the orientation to the target's),
    both in the parent frame."""
    pos, quat = pose
    target_pos, target_quat = target
    return np.asarray(target_pos) - np.asarray(pos), rotation_vector(quat_multiply(target_quat, quat_conjugate(quat)))
