"""Replay buffer: preallocated numpy ring buffer of transitions.

The durable replay store of the learner service is built on it (robot_sql/replay_store.py).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from robot_sql.sql import BATCH_KEYS


class ReplayBuffer:
    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 (got {capacity})")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.arrays = {
            "observations": np.zeros((capacity, obs_dim), np.float32),
            "actions": np.zeros((capacity, act_dim), np.float32),
            "rewards": np.zeros((capacity,), np.float32),
            "next_observations": np.zeros((capacity, obs_dim), np.float32),
            "terminals": np.zeros((capacity,), np.float32),
        }
        self.size = 0
        self.cursor = 0  # next slot to write

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward: float, next_obs, terminal: bool) -> None:
        self.add_batch(
            {
                "observations": np.asarray(obs)[None],
                "actions": np.asarray(action)[None],
                "rewards": np.asarray([reward]),
                "next_observations": np.asarray(next_obs)[None],
                "terminals": np.asarray([terminal]),
            }
        )

    def add_batch(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append n transitions; shapes and finiteness are checked before anything is written."""
        missing = [key for key in BATCH_KEYS if key not in batch]
        if missing:
            raise ValueError(f"transitions are missing {missing}")
        n = len(batch["rewards"])
        values = {}
        for key in BATCH_KEYS:
            value = np.asarray(batch[key], dtype=np.float32)
            expected = (n, *self.arrays[key].shape[1:])
            if value.shape != expected:
                raise ValueError(f"transitions[{key!r}] has shape {value.shape}, expected {expected}")
            if not np.isfinite(value).all():
                raise ValueError(f"transitions[{key!r}] contains NaN or inf")
            values[key] = value
        if n > self.capacity:  # only the newest `capacity` survive a ring buffer anyway
            values = {key: value[-self.capacity :] for key, value in values.items()}
            n = self.capacity
        before_wrap = min(n, self.capacity - self.cursor)
        for key, value in values.items():  # two slice copies: much cheaper than an index array
            self.arrays[key][self.cursor : self.cursor + before_wrap] = value[:before_wrap]
            self.arrays[key][: n - before_wrap] = value[before_wrap:]
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = rng.integers(0, self.size, size=batch_size)
        return {key: array[index] for key, array in self.arrays.items()}

    def contents(self) -> dict[str, np.ndarray]:
        """All stored transitions (copies), oldest first."""
        order = (self.cursor - self.size + np.arange(self.size)) % self.capacity
        return {key: array[order] for key, array in self.arrays.items()}

    def save(self, path) -> None:
        np.savez(path, **self.contents())

    @classmethod
    def load(cls, path, capacity: int | None = None) -> "ReplayBuffer":
        with np.load(path, allow_pickle=False) as data:
            contents = {key: data[key] for key in BATCH_KEYS}
        n = len(contents["rewards"])
        buffer = cls(contents["observations"].shape[1], contents["actions"].shape[1], capacity or max(n, 1))
        buffer.add_batch(contents)
        return buffer
