"""Forward kinematics of the Sawyer from joint angles alone: `right_hand` position and its Jacobian.

Uses the project's MJCF (built from the URDF numbers, reference/sawyer.md C) for kinematics
only, so the safety filter knows where the end effector is and where a velocity command
moves it on the real arm as well as in the simulator, without trusting a second topic.
"""
from __future__ import annotations

import mujoco
import numpy as np

from robot_sql import sawyer


class SawyerKinematics:
    def __init__(self):
        from robot_sql.sim.scenes import build_model

        self.model = build_model("arm")
        self.data = mujoco.MjData(self.model)
        self._qpos = np.array([self.model.joint(name).qposadr[0] for name in sawyer.JOINT_NAMES])
        self._dofs = np.array([self.model.joint(name).dofadr[0] for name in sawyer.JOINT_NAMES])
        self._hand = self.model.site(sawyer.END_EFFECTOR_FRAME).id
        self._jacp = np.zeros((3, self.model.nv))

    def hand(self, joint_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(right_hand position in `base`, d position / d joint angles as 3 x 7)."""
        self.data.qpos[self._qpos] = joint_positions
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jacp, None, self._hand)
        return self.data.site_xpos[self._hand].copy(), self._jacp[:, self._dofs].copy()
