"""2-D point-mass tasks: the paper's MultiGoal and the small tasks of the composition and
fine-tuning experiments.

All share the MultiGoal dynamics of the reference code (environments/multigoal.py): the state
is a position in [-7, 7]^2, the action a velocity in [-1, 1]^2, s' = clip(s + a, -7, 7), no
noise, and the start state is drawn from N(0, 0.1^2 I) (the composition's constituents: anywhere
in a box, see LineEnv). The tasks differ only in reward, termination, start and success, each
defined in one small class below.
"""
from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

BOUND = 7.0
START_STD = 0.1
MULTIGOAL_GOALS = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]], dtype=np.float32)


class PointMassEnv(gymnasium.Env):
    """Base class: the dynamics. Subclasses define `reward_and_done(position, action, next_position)`
    and `is_success(position)`; `info["is_success"]` (the gymnasium name) reports the latter at every step."""

    metadata = {"render_modes": []}
    start_box: float | None = None  # start uniformly in [-start_box, start_box]^2; None: N(0, START_STD^2 I)

    def __init__(self):
        self.observation_space = spaces.Box(-BOUND, BOUND, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.position = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.start_box is None:
            start = self.np_random.normal(0.0, START_STD, size=2)
        else:
            start = self.np_random.uniform(-self.start_box, self.start_box, size=2)
        self.position = np.clip(start, -BOUND, BOUND).astype(np.float32)
        return self.position.copy(), {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        next_position = np.clip(self.position + action, -BOUND, BOUND).astype(np.float32)
        reward, terminated = self.reward_and_done(self.position, action, next_position)
        self.position = next_position
        info = {"is_success": bool(self.is_success(next_position))}
        return next_position.copy(), float(reward), bool(terminated), False, info

    def reward_and_done(self, position, action, next_position) -> tuple[float, bool]:
        raise NotImplementedError

    def is_success(self, position) -> bool:
        raise NotImplementedError


class MultiGoalEnv(PointMassEnv):
    """Four goals at (+-5, 0), (0, +-5); the episode ends within 1.0 of a goal with +10.

    reward = -30 ||a||^2 - min_g ||s' - g||^2 (+10 on reaching a goal), as in the reference.
    """

    goals = MULTIGOAL_GOALS
    action_cost = 30.0
    distance_cost = 1.0
    goal_reward = 10.0
    goal_threshold = 1.0

    def reward_and_done(self, position, action, next_position):
        distances = np.linalg.norm(self.goals - next_position, axis=1)
        reached = bool(distances.min() < self.goal_threshold)
        reward = -self.action_cost * float(action @ action) - self.distance_cost * float(distances.min() ** 2)
        return reward + (self.goal_reward if reached else 0.0), reached

    def is_success(self, position) -> bool:
        return bool(np.linalg.norm(self.goals - position, axis=1).min() < self.goal_threshold)

    def goal_index(self, position) -> int | None:
        """Which goal `position` has reached, or None."""
        distances = np.linalg.norm(self.goals - position, axis=1)
        return int(distances.argmin()) if distances.min() < self.goal_threshold else None


class ReachTargetEnv(PointMassEnv):
    """Reach a target set and stay there; no termination (composition needs fixed horizons).

    reward = -action_cost ||a||^2 - distance(s', target set); success: within `tolerance` of it.
    Composing two of these (sum of their Q-functions) targets the intersection of their sets.
    """

    action_cost = 0.1
    tolerance = 1.0  # as MultiGoal's goal radius

    def distance(self, position) -> float:
        raise NotImplementedError

    def reward_and_done(self, position, action, next_position):
        return -self.action_cost * float(action @ action) - self.distance(next_position), False

    def is_success(self, position) -> bool:
        return self.distance(position) < self.tolerance


class LineEnv(ReachTargetEnv):
    """A constituent of the composition: reach a line, from a start anywhere in [-5, 5]^2.

    The composed policy follows Q_x + Q_y to the corner, where neither constituent's own policy
    goes often. Started at the origin, the line y = 4 agent had hardly been at x = 4, its Q was
    wrong there and the composition overshot the corner (docs/sql.md); started anywhere in the
    box, each Q is trained on the corner's states too."""

    start_box = 5.0


class LineXEnv(LineEnv):
    """Reach the line x = 4."""

    def distance(self, position) -> float:
        return abs(float(position[0]) - 4.0)


class LineYEnv(LineEnv):
    """Reach the line y = 4."""

    def distance(self, position) -> float:
        return abs(float(position[1]) - 4.0)


class CornerEnv(ReachTargetEnv):
    """Reach the corner (4, 4): the intersection of LineX and LineY. Its reward is the sum of
    theirs up to the action cost, so the summed Q-functions are the composition bound's Q_sum."""

    def distance(self, position) -> float:
        return abs(float(position[0]) - 4.0) + abs(float(position[1]) - 4.0)

    def is_success(self, position) -> bool:
        return float(np.linalg.norm(np.asarray(position) - 4.0)) < self.tolerance


class RunEnv(PointMassEnv):
    """Pretraining task of the fine-tuning experiment: move fast, in any direction.

    reward = ||s' - s|| (distance covered; walls stop the point), no termination.
    """

    def reward_and_done(self, position, action, next_position):
        return float(np.linalg.norm(next_position - position)), False

    def is_success(self, position) -> bool:
        return bool(np.linalg.norm(position) > 5.0)


class SingleGoalEnv(PointMassEnv):
    """Fine-tuning task: reach the one goal at (0, 5); ends there with +10.

    reward = -||s' - g|| (+10 on reaching it)."""

    goal = np.array([0.0, 5.0], dtype=np.float32)
    goal_threshold = 1.0
    goal_reward = 10.0

    def reward_and_done(self, position, action, next_position):
        distance = float(np.linalg.norm(next_position - self.goal))
        reached = distance < self.goal_threshold
        return -distance + (self.goal_reward if reached else 0.0), reached

    def is_success(self, position) -> bool:
        return float(np.linalg.norm(position - self.goal)) < self.goal_threshold
