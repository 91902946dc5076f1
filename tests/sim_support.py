"""Helpers for tests that run the simulated envs."""
from __future__ import annotations

import gymnasium


class EpisodeEnds(gymnasium.Wrapper):
    """Records the `info` each episode ended with, as the env gave it."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self.final_infos: list[dict] = []

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self.final_infos.append(dict(info))
        return observation, reward, terminated, truncated, info
