"""The safety filter between a policy and the arm: every velocity command passes through here.

Pure and fast (numpy only, no I/O): given the command the policy asks for and what is known
about the arm right now, `SafetyFilter.check` returns either a velocity that is safe to send
or None, which means "stop commanding velocity and hold the current angles". In order:

1. e-stop latched, joint state older than `stale_after` s, or any NaN/inf in the command or
   the state -> hold;
2. velocity limits: the whole command is scaled down (direction kept) until every joint is
   within its limit;
3. joint position limits: within `slowdown_margin` rad of a limit, the speed allowed towards
   it falls linearly to zero (moving away is always allowed);
4. end-effector workspace box: the command is scaled so that the end effector, moving at
   the commanded velocity for `lookahead` s, stays inside the box; outside the box only
   motion back towards it is allowed. Without a Jacobian the direction of end-effector motion
   is unknown, so an end effector outside the box means hold.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from robot_sql import sawyer


# an end-effector box (m, in base) around everything the Sawyer tasks reach, with room to spare
SAWYER_WORKSPACE = ((0.3, -0.4, -0.05), (0.85, 0.45, 0.5))


@dataclass(frozen=True)
class SafetyLimits:
    position_lower: np.ndarray
    position_upper: np.ndarray
    velocity_max: np.ndarray
    workspace_low: np.ndarray  # end-effector box in the base frame (m)
    workspace_high: np.ndarray
    slowdown_margin: float = 0.15  # rad
    stale_after: float = 0.05  # s; a few joint-state periods
    lookahead: float = 0.1  # s

    @classmethod
    def sawyer(
        cls,
        speed_fraction: float,
        workspace_low,
        workspace_high,
        slowdown_margin: float = 0.15,
        stale_after: float = 0.05,
        lookahead: float = 0.1,
    ) -> "SafetyLimits":
        """The Sawyer's joint limits with velocities scaled by `speed_fraction` (0, 1]."""
        if not 0.0 < speed_fraction <= 1.0:
            raise ValueError(f"speed_fraction must be in (0, 1], got {speed_fraction}")
        return cls(
            position_lower=np.asarray(sawyer.POSITION_LOWER),
            position_upper=np.asarray(sawyer.POSITION_UPPER),
            velocity_max=speed_fraction * np.asarray(sawyer.VELOCITY_LIMITS),
            workspace_low=np.asarray(workspace_low, dtype=np.float64),
            workspace_high=np.asarray(workspace_high, dtype=np.float64),
            slowdown_margin=slowdown_margin,
            stale_after=stale_after,
            lookahead=lookahead,
        )

    def __post_init__(self):
        for name in ("position_lower", "position_upper", "velocity_max", "workspace_low", "workspace_high"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"safety limit {name} must be finite, got {value.tolist()}")
            object.__setattr__(self, name, value)
        if self.workspace_low.shape != (3,) or self.workspace_high.shape != (3,):
            raise ValueError("the workspace box needs 3 lower and 3 upper values (x, y, z in m)")
        if np.any(self.workspace_low >= self.workspace_high):
            raise ValueError(f"empty workspace box: low {self.workspace_low.tolist()} high {self.workspace_high.tolist()}")
        if np.any(self.velocity_max <= 0) or np.any(self.position_lower >= self.position_upper):
            raise ValueError("velocity limits must be positive and each lower joint limit below the upper one")
        if min(self.slowdown_margin, self.stale_after, self.lookahead) <= 0:
            raise ValueError("slowdown_margin, stale_after and lookahead must be positive")


@dataclass(frozen=True)
class Decision:
    velocity: np.ndarray | None  # None: hold
    reason: str  # "ok", "limited" (the command was changed) or why the arm holds

    @property
    def hold(self) -> bool:
        return self.velocity is None


class SafetyFilter:
    def __init__(self, limits: SafetyLimits):
        self.limits = limits

    def check(
        self,
        command,
        joint_positions,
        ee_position,
        state_age: float,
        estopped: bool = False,
        jacobian=None,
    ) -> Decision:
        """The velocity to send for `command`, or hold; `jacobian` is d(ee position)/dq, 3 x 7."""
        limits = self.limits
        if estopped:
            return Decision(None, "estop")
        if not state_age <= limits.stale_after:  # NaN ages are stale too
            return Decision(None, "stale joint state")
        command = np.asarray(command, dtype=np.float64)
        q = np.asarray(joint_positions, dtype=np.float64)
        ee = np.asarray(ee_position, dtype=np.float64)
        if command.shape != limits.velocity_max.shape or q.shape != limits.velocity_max.shape or ee.shape != (3,):
            return Decision(None, "wrong shape")
        if not np.all(np.isfinite(command)):
            return Decision(None, "non-finite command")
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(ee))):
            return Decision(None, "non-finite state")

        velocity = command * min(1.0, float(np.min(limits.velocity_max / np.maximum(np.abs(command), 1e-12))))

        # speed allowed towards each joint limit ramps to zero over the margin
        room_up = np.clip((limits.position_upper - q) / limits.slowdown_margin, 0.0, 1.0)
        room_down = np.clip((q - limits.position_lower) / limits.slowdown_margin, 0.0, 1.0)
        velocity = np.clip(velocity, -limits.velocity_max * room_down, limits.velocity_max * room_up)

        if jacobian is None:
            if np.any(ee < limits.workspace_low) or np.any(ee > limits.workspace_high):
                return Decision(None, "end effector outside the workspace")
        else:
            jacobian = np.asarray(jacobian, dtype=np.float64)
            if jacobian.shape != (3, q.shape[0]) or not np.all(np.isfinite(jacobian)):
                return Decision(None, "bad jacobian")
            velocity = velocity * self._workspace_scale(ee, jacobian @ velocity)

        changed = not np.allclose(velocity, command, rtol=0.0, atol=1e-12)
        return Decision(velocity, "limited" if changed else "ok")

    def _workspace_scale(self, ee: np.ndarray, ee_velocity: np.ndarray) -> float:
        """Largest s in [0, 1] keeping ee + s * ee_velocity * lookahead inside the box (per outward axis)."""
        limits = self.limits
        step = ee_velocity * limits.lookahead
        scale = 1.0
        for axis in range(3):
            if step[axis] > 0:
                room = limits.workspace_high[axis] - ee[axis]
            elif step[axis] < 0:
                room = ee[axis] - limits.workspace_low[axis]
            else:
                continue
            room = max(room, 0.0)
            if abs(step[axis]) > room:  # compared first: room / a subnormal step would overflow
                scale = min(scale, room / abs(step[axis]))
        return float(scale)


class GuardedRobot:
    """A Robot (robot_sql/robot.py) whose velocity commands all pass the safety filter.

    Wraps the simulator and the ROS-backed arm alike. `estop()` may come from any thread (a
    ROS callback, the actor's control channel): it latches, holds the arm at once, and a lock
    makes sure no velocity command checked before it can reach the arm after it. The arm is
    told to hold once, when commanding stops; `rearm()` clears the latch.
    """

    def __init__(self, robot, safety: SafetyFilter, kinematics=None):
        self.robot = robot
        self.safety = safety
        self.kinematics = kinematics  # SawyerKinematics, or None: end effector from robot.ee_pose()
        self.joint_names = robot.joint_names
        self.estopped = False
        self.holding = False
        self.last_decision: Decision | None = None
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name):  # time, joint_positions, ee_pose, advance, perturbations ...
        return getattr(self.robot, name)

    def state_age(self) -> float:
        state_age = getattr(self.robot, "state_age", None)
        return state_age() if state_age is not None else 0.0

    def send_velocity(self, velocity) -> Decision:
        with self._lock:
            q = self.robot.joint_positions()
            if self.kinematics is not None and np.all(np.isfinite(q)):
                ee, jacobian = self.kinematics.hand(q)
            else:
                ee, jacobian = self.robot.ee_pose()[0], None
            decision = self.safety.check(velocity, q, ee, self.state_age(), self.estopped, jacobian)
            self.last_decision = decision
            self.counts[decision.reason] = self.counts.get(decision.reason, 0) + 1
            if decision.hold:
                self._hold_once()
            else:
                self.holding = False
                self.robot.send_velocity(decision.velocity)
            return decision

    def hold(self) -> None:
        with self._lock:
            self._hold_once()

    def _hold_once(self) -> None:
        if not self.holding:
            self.holding = True
            self.robot.hold()

    def estop(self) -> None:
        with self._lock:
            self.estopped = True
            self.holding = True
            self.robot.hold()

    def rearm(self) -> None:
        with self._lock:
            self.estopped = False

    def send_position(self, position) -> None:
        """Position mode (the robot clips to the joint limits); RuntimeError, holding, when latched or stale."""
        with self._lock:
            if self.estopped:
                raise RuntimeError("e-stop is latched: rearm before moving")
            if not self.state_age() <= self.safety.limits.stale_after:
                self._hold_once()
                raise RuntimeError("joint state is stale")
            self.holding = False
            self.robot.send_position(position)

    def displace(self, delta) -> None:
        """Perturbation: a simulator shifts its joints at once; a real arm moves there in position
        mode (stopped like any move by an e-stop), and the call returns once it is there."""
        from robot_sql.robot import clip_position, finite_joint_vector

        if self.estopped:
            raise RuntimeError("e-stop is latched: rearm before moving")
        delta = finite_joint_vector(delta, "joint displacement")
        if hasattr(self.robot, "displace"):
            self.robot.displace(delta)
        elif not self.move_to(clip_position(self.robot.joint_positions() + delta)):
            raise RuntimeError("the displaced configuration was not reached (e-stop, stale state or timeout)")

    def move_to(self, target, timeout: float = 15.0, tolerance: float = 0.01) -> bool:
        """Position-mode move (episode reset); gives up, holding, if the e-stop latches or the state goes stale."""
        from robot_sql.robot import joint_target

        goal = joint_target(target)
        deadline = self.robot.time + timeout
        while self.robot.time < deadline:
            try:
                self.send_position(goal)
            except RuntimeError:
                return False
            self.robot.advance(0.05)
            q = self.robot.joint_positions()
            if np.max(np.abs(q - goal)) < tolerance and np.max(np.abs(self.robot.joint_velocities())) < 0.05:
                return True
        return False


def guard_sawyer(robot, speed_fraction: float = 0.5, workspace=SAWYER_WORKSPACE) -> GuardedRobot:
    """`robot` behind the safety filter with the Sawyer's limits (the fast path's default:
    above the envs' action scale of 0.3, so only limits and the box change a command)."""
    from robot_sql.kinematics import SawyerKinematics

    return GuardedRobot(robot, SafetyFilter(SafetyLimits.sawyer(speed_fraction, *workspace)), SawyerKinematics())
