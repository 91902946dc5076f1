"""PNG plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import gymnasium
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robot_sql.envs.point_mass import BOUND  # noqa: E402


def plot_point_trajectories(env_id: str, trajectories: Sequence[np.ndarray], path: Path) -> None:
    """Rollouts over the plane, as in figure 1 of the paper: the cost landscape, the goals, the paths."""
    env = gymnasium.make(env_id).unwrapped
    grid = np.linspace(-BOUND, BOUND, 141)
    xs, ys = np.meshgrid(grid, grid)
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    if hasattr(env, "goals"):
        cost = np.min(((points[:, None, :] - env.goals[None]) ** 2).sum(-1), axis=1)
    elif hasattr(env, "distance"):
        cost = np.array([env.distance(p) for p in points])
    elif hasattr(env, "goal"):
        cost = np.linalg.norm(points - env.goal, axis=1)
    else:
        cost = -np.linalg.norm(points, axis=1)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.contourf(xs, ys, cost.reshape(xs.shape), levels=20, cmap="Greys_r", alpha=0.6)
    for path_xy in trajectories:
        ax.plot(path_xy[:, 0], path_xy[:, 1], color="tab:blue", linewidth=0.8, alpha=0.7)
        ax.plot(path_xy[-1, 0], path_xy[-1, 1], "o", color="tab:blue", markersize=2)
    for goal in np.atleast_2d(getattr(env, "goals", getattr(env, "goal", np.empty((0, 2))))):
        ax.plot(goal[0], goal[1], "r*", markersize=14)
    ax.set(xlim=(-BOUND, BOUND), ylim=(-BOUND, BOUND), aspect="equal", title=f"{env_id}: {len(trajectories)} rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
