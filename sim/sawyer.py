"""`MujocoSawyer`: the simulated Sawyer behind the `Robot` interface (robot_sql/robot.py).

It behaves like Intera's joint controller, in-process and without real time:

- velocity mode: each joint's servo tracks a reference velocity that ramps towards the
  command within the acceleration limits, never above 97% of the velocity limit, and brakes
  so the joint stops 0.05 rad inside its limits; the servo feeds forward the joint's viscous
  damping (the real controller compensates its friction), the Coriolis torques and the
  inertial coupling of the ramp, all within the effort limits, with gravity compensated as
  on the real arm;
- the command expires after 0.2 s (Intera's joint_command_timeout): the arm then holds the
  angles it has at that instant;
- position mode and holding: a PD law (HOLD_STIFFNESS, HOLD_DAMPING) tracks a joint-angle
  reference; `send_position` and `move_to` move the reference towards the target at the speed
  ratio (0.3 of the velocity limits by default, as `move_to_neutral`), then hold it;
- the joint-limit constraints of sawyer.xml (active from 0.03 rad inside) are a backstop;
- `advance(seconds)` integrates the physics; timed events (command timeout, end of a wrench)
  happen at their exact physics step.
"""
from __future__ import annotations

from typing import Sequence

import mujoco
import numpy as np

from robot_sql import sawyer
from robot_sql.robot import JointTarget, clip_position, clip_velocity, finite_joint_vector, joint_target
from robot_sql.sim.scenes import build_model

REFERENCE_STEP_S = 0.01  # the servo references are re-planned at 100 Hz, Intera's SDK rate
# the servo aims at most this fraction of a velocity limit, so that its tracking transients
# (a percent or two when other joints brake or saturate) stay under the limit itself
VELOCITY_HEADROOM = 0.97
LIMIT_MARGIN = 0.05  # rad: velocity mode brakes to stop this far inside the joint limits (before the
# limit constraints, which act from 0.03 rad inside, sawyer.xml)
# servo gains per joint: velocity servos with time constants of a few ms (the ramp shapes the
# response); the PD of position mode and holding has about 30 rad/s of bandwidth at neutral
VELOCITY_GAIN = np.array([1000.0, 1000.0, 400.0, 400.0, 60.0, 60.0, 40.0])  # Nm per rad/s
HOLD_STIFFNESS = np.array([1500.0, 1500.0, 600.0, 600.0, 120.0, 120.0, 60.0])  # Nm per rad
HOLD_DAMPING = np.array([100.0, 100.0, 40.0, 40.0, 8.0, 8.0, 4.0])  # Nm per rad/s


class MujocoSawyer:
    joint_names = sawyer.JOINT_NAMES

    def __init__(self, model: mujoco.MjModel | None = None, speed_ratio: float = sawyer.DEFAULT_SPEED_RATIO,
                 command_timeout: float = sawyer.COMMAND_TIMEOUT_S):
        if not 0.0 < speed_ratio <= 1.0:
            raise ValueError(f"speed_ratio must be in (0, 1], got {speed_ratio}")
        self.model = model if model is not None else build_model("arm")
        self.data = mujoco.MjData(self.model)
        self.speed_ratio = speed_ratio
        self.command_timeout = command_timeout
        self.timestep = float(self.model.opt.timestep)
        # sawyer.xml declares the arm's seven joints and servos first: plain slices are fast
        self._arm = slice(0, len(self.joint_names))
        for index, name in enumerate(self.joint_names):
            if (self.model.joint(name).qposadr[0], self.model.joint(name).dofadr[0], self.model.actuator(name).id) != (index,) * 3:
                raise ValueError(f"{name} must be joint, dof and actuator {index} of the model")
        self._hand = self.model.site(sawyer.END_EFFECTOR_FRAME).id
        self._links = {name: self.model.body(name).id for name in sawyer.LINK_NAMES}
        self._damping = self.model.dof_damping[self._arm].copy()
        self._mass_matrix = np.zeros((self.model.nv, self.model.nv))
        self._mode = "hold"
        self._command_deadline = np.inf
        self._position_target = np.zeros(7)
        self._velocity_command = np.zeros(7)
        self._wrench_ends: dict[int, float] = {}
        self.reset("neutral")

    # ---- state -------------------------------------------------------------------------
    @property
    def time(self) -> float:
        return float(self.data.time)

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._arm].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._arm].copy()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._hand])
        return self.data.site_xpos[self._hand].copy(), quat if quat[0] >= 0 else -quat

    # ---- commands ----------------------------------------------------------------------
    def send_velocity(self, velocity: Sequence[float] | np.ndarray) -> None:
        try:
            velocity = clip_velocity(velocity)
        except ValueError:
            self.hold()
            raise
        if self._mode != "velocity":
            self._set_servo("velocity")
            self.data.ctrl[self._arm] = self.joint_velocities()
        self._velocity_command = velocity
        self._command_deadline = self.time + self.command_timeout

    def send_position(self, position: Sequence[float] | np.ndarray) -> None:
        try:
            self._position_target = clip_position(position)
        except ValueError:
            self.hold()
            raise
        if self._mode != "position":
            self._set_servo("position")
            self.data.ctrl[self._arm] = self.joint_positions()

    def hold(self) -> None:
        self._set_servo("hold")
        self.data.ctrl[self._arm] = self.joint_positions()

    def _set_servo(self, mode: str) -> None:
        """Switch the joint servos: force = gain * ctrl + bias_q * q + bias_v * qdot."""
        if mode == "velocity":  # ctrl = velocity command
            gain, stiffness, damping = VELOCITY_GAIN + self._damping, 0.0, VELOCITY_GAIN
        else:  # ctrl = joint-angle reference
            gain, stiffness, damping = HOLD_STIFFNESS, HOLD_STIFFNESS, HOLD_DAMPING
        self.model.actuator_gainprm[self._arm, 0] = gain
        self.model.actuator_biasprm[self._arm, 0] = 0.0
        self.model.actuator_biasprm[self._arm, 1] = -stiffness
        self.model.actuator_biasprm[self._arm, 2] = -damping
        self._mode = mode
        self._command_deadline = np.inf

    def move_to(self, target: JointTarget, timeout: float = 15.0, tolerance: float = 0.01) -> bool:
        goal = joint_target(target)
        self.send_position(goal)
        deadline = self.time + timeout
        while self.time < deadline:
            self.advance(0.05)
            if np.max(np.abs(self.joint_positions() - goal)) < tolerance and \
                    np.max(np.abs(self.joint_velocities())) < 0.05:
                return True
        return False

    def reset(self, target: JointTarget = "neutral") -> None:
        """Sim only: place the arm at `target` at rest, clear perturbations and hold there."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm] = joint_target(target)
        self._wrench_ends.clear()
        mujoco.mj_forward(self.model, self.data)
        self.hold()

    def set_gripper(self, finger_travel: float) -> None:
        """Sim only: each finger's opening from the centre (m), 0 = closed."""
        travel = float(np.clip(finger_travel, 0.0, sawyer.GRIPPER_FINGER_TRAVEL))
        self.data.ctrl[self.model.actuator("right_gripper_l_finger").id] = travel
        self.data.ctrl[self.model.actuator("right_gripper_r_finger").id] = -travel
        self.data.qpos[self.model.joint("right_gripper_l_finger_joint").qposadr[0]] = travel
        self.data.qpos[self.model.joint("right_gripper_r_finger_joint").qposadr[0]] = -travel

    # ---- perturbations -----------------------------------------------------------------
    def apply_wrench(self, link: str, force: Sequence[float], torque: Sequence[float], duration: float) -> None:
        if link not in self._links:
            raise ValueError(f"unknown link {link!r}; known: {list(self._links)}")
        wrench = np.concatenate([np.asarray(force, dtype=np.float64), np.asarray(torque, dtype=np.float64)])
        if wrench.shape != (6,) or not np.all(np.isfinite(wrench)):
            raise ValueError(f"force and torque need 3 finite values each, got {force!r}, {torque!r}")
        if not np.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        body = self._links[link]
        self.data.xfrc_applied[body] = wrench
        self._wrench_ends[body] = self.time + duration

    def displace(self, delta: Sequence[float] | np.ndarray) -> None:
        delta = finite_joint_vector(delta, "joint displacement")
        self.data.qpos[self._arm] = clip_position(self.joint_positions() + delta)
        self.data.qvel[self._arm] = 0.0
        mujoco.mj_forward(self.model, self.data)
        self.hold()

    # ---- time --------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Integrate the physics for `seconds` (rounded to whole physics steps)."""
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        steps_left = int(round(seconds / self.timestep))
        reference_steps = max(int(round(REFERENCE_STEP_S / self.timestep)), 1)
        while steps_left > 0:
            steps = steps_left
            if self._mode == "velocity":
                steps = min(steps, self._steps_until(self._command_deadline))
            for end in self._wrench_ends.values():
                steps = min(steps, self._steps_until(end))
            steps = max(steps, 1)
            if self._mode in ("velocity", "position"):
                steps = min(steps, reference_steps)
                self._plan_reference(steps * self.timestep)
            mujoco.mj_step(self.model, self.data, nstep=steps)
            steps_left -= steps
            self._fire_timed_events()

    def _steps_until(self, when: float) -> int:
        return max(int(np.ceil((when - self.time) / self.timestep - 1e-6)), 0)

    def _fire_timed_events(self) -> None:
        if self._mode == "velocity" and self._steps_until(self._command_deadline) == 0:
            self.hold()  # Intera: no fresh command within the timeout -> hold the current angles
        for body, end in list(self._wrench_ends.items()):
            if self._steps_until(end) == 0:
                self.data.xfrc_applied[body] = 0.0
                del self._wrench_ends[body]

    def _plan_reference(self, duration: float) -> None:
        """Move the servo reference for the next `duration` s. Velocity mode ramps the reference
        velocity towards the command within the acceleration limits (braking before joint
        limits) and feeds forward the torques of that motion (inverse dynamics less gravity,
        which is compensated already); position mode steps the reference angles towards the
        target at the speed ratio of the velocity limits."""
        reference = self.data.ctrl[self._arm].copy()
        if self._mode == "position":
            max_step = self.speed_ratio * sawyer.VELOCITY_LIMITS * duration
            self.data.ctrl[self._arm] = reference + np.clip(self._position_target - reference, -max_step, max_step)
            return
        q = self.joint_positions()
        room_up = np.maximum(sawyer.POSITION_UPPER - LIMIT_MARGIN - q, 0.0)
        room_down = np.maximum(q - sawyer.POSITION_LOWER - LIMIT_MARGIN, 0.0)
        headroom = VELOCITY_HEADROOM * sawyer.VELOCITY_LIMITS
        braking = 2 * sawyer.ACCELERATION_LIMITS  # v^2 = 2 a d: the speed that still stops in d
        goal = np.clip(self._velocity_command, -np.minimum(np.sqrt(braking * room_down), headroom),
                       np.minimum(np.sqrt(braking * room_up), headroom))
        max_change = sawyer.ACCELERATION_LIMITS * duration
        acceleration = np.clip(goal - reference, -max_change, max_change) / duration
        self.data.ctrl[self._arm] = reference + acceleration * duration
        mujoco.mj_fullM(self.model, self.data, self._mass_matrix)
        # the coupling through the off-diagonal inertia only: each joint's own inertia is left
        # to its servo, which then approaches the new reference from below, never beyond it
        coupling = self._mass_matrix[self._arm, self._arm]
        np.fill_diagonal(coupling, 0.0)
        coriolis = self.data.qfrc_bias[self._arm] - self.data.qfrc_gravcomp[self._arm]
        self.model.actuator_biasprm[self._arm, 0] = coupling @ acceleration + coriolis
