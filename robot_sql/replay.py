"""Replay buffer: a preallocated numpy ring of transitions, one float32 row per transition.

A row is [observation (S) | action (D) | reward | next observation (S) | terminal], the
columns of `BATCH_KEYS` side by side. The same rows travel on the wire (one array per
transitions message, robot_sql/protocol.py) and are what the durable replay store keeps
(robot_sql/replay_store.py): receiving a batch is one check and one copy, not five.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

BATCH_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")


def transition_columns(obs_dim: int, act_dim: int) -> dict[str, slice]:
    """Where each of `BATCH_KEYS` lies in a transition row."""
    widths = {"observations": obs_dim, "actions": act_dim, "rewards": 1, "next_observations": obs_dim, "terminals": 1}
    columns, start = {}, 0
    for key in BATCH_KEYS:
        columns[key] = slice(start, start + widths[key])
        start += widths[key]
    return columns


def transition_width(obs_dim: int, act_dim: int) -> int:
    return 2 * obs_dim + act_dim + 2


def pack_transition(observation, action, reward: float, next_observation, terminal: bool) -> np.ndarray:
    """One transition as a row (what an actor collects, step by step)."""
    return np.concatenate([np.ravel(observation), np.ravel(action), [reward], np.ravel(next_observation), [terminal]],
                          dtype=np.float32)


def pack_batch(batch: Mapping[str, np.ndarray], obs_dim: int, act_dim: int) -> np.ndarray:
    """The batch dict of `BATCH_KEYS` (columns) -> rows [n, W]; shapes are checked (ValueError)."""
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise ValueError(f"transitions are missing {missing}")
    n = len(batch["rewards"])
    rows = np.empty((n, transition_width(obs_dim, act_dim)), np.float32)
    for key, where in transition_columns(obs_dim, act_dim).items():
        value = np.asarray(batch[key], dtype=np.float32)
        expected = (n,) if key in ("rewards", "terminals") else (n, where.stop - where.start)
        if value.shape != expected:
            raise ValueError(f"transitions[{key!r}] has shape {value.shape}, expected {expected}")
        rows[:, where] = value.reshape(n, -1)
    return rows


def unpack_rows(rows: np.ndarray, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Rows [n, W] -> the batch dict of `BATCH_KEYS` (views; rewards and terminals [n])."""
    batch = {key: rows[:, columns] for key, columns in transition_columns(obs_dim, act_dim).items()}
    batch["rewards"], batch["terminals"] = batch["rewards"][:, 0], batch["terminals"][:, 0]
    return batch


class ReplayBuffer:
    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 (got {capacity})")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.rows = np.zeros((capacity, transition_width(obs_dim, act_dim)), np.float32)
        self.size = 0
        self.cursor = 0  # next slot to write

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward: float, next_obs, terminal: bool) -> None:
        """Append one transition, checked as `add_batch` checks."""
        self.add_batch({"observations": np.asarray(obs)[None], "actions": np.asarray(action)[None],
                        "rewards": np.asarray([reward]), "next_observations": np.asarray(next_obs)[None],
                        "terminals": np.asarray([terminal])})

    def add_batch(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append n transitions given as columns; shapes and finiteness are checked before anything is written."""
        rows = pack_batch(batch, self.obs_dim, self.act_dim)
        for key, where in transition_columns(self.obs_dim, self.act_dim).items():
            if not np.isfinite(rows[:, where]).all():
                raise ValueError(f"transitions[{key!r}] contains NaN or inf")
        self.add_rows(rows)

    def add_rows(self, rows: np.ndarray) -> None:
        """Append transition rows [n, W] that are already checked (shape, float32, finite)."""
        n = len(rows)
        skip = max(n - self.capacity, 0)  # only the newest `capacity` survive a ring buffer anyway
        n -= skip
        before_wrap = min(n, self.capacity - self.cursor)
        self.rows[self.cursor: self.cursor + before_wrap] = rows[skip: skip + before_wrap]  # two slice copies
        self.rows[: n - before_wrap] = rows[skip + before_wrap:]
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return unpack_rows(self.rows[rng.integers(0, self.size, size=batch_size)], self.obs_dim, self.act_dim)

    def contents(self) -> dict[str, np.ndarray]:
        """All stored transitions (copies), oldest first."""
        order = (self.cursor - self.size + np.arange(self.size)) % self.capacity
        return unpack_rows(self.rows[order], self.obs_dim, self.act_dim)

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
