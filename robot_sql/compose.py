"""Composition of soft Q-functions: `robot-sql compose` (Haarnoja et al., ICRA 2018).

Given SQL agents trained on constituent tasks, a fresh sampler is trained by SVGD against
Q_sum = sum_i Q_i (or their mean, as in the ICRA paper) with every Q_i frozen, on the
observations of the union of the constituents' replay buffers: no new environment steps.
For max-entropy policies Q_sum bounds the optimal Q of the task with the summed reward:
Q_sum >= Q*_C >= Q_sum - C*, C* set by the policies' divergence (ICRA 2018, sec. IV).
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from torch import Tensor, nn
from tqdm import trange

from robot_sql.config import ConfigError
from robot_sql.replay import ReplayBuffer
from robot_sql.sql import QNetwork, SoftQLearning, SQLConfig, load_checkpoint, save_policy
from robot_sql.train import evaluate, resolve_env_id, write_eval


class ComposedQ(nn.Module):
    """Frozen sum (or mean) of constituent Q-functions; each constituent's twin heads are min-ed first.

    The SVGD step needs only the energy's action gradient, which is the sum (mean) of theirs."""

    def __init__(self, q_functions: list[QNetwork], mean: bool = False):
        super().__init__()
        self.q_functions = nn.ModuleList(q_functions).requires_grad_(False)
        self.mean = mean

    def action_gradient(self, observations: Tensor, actions: Tensor) -> Tensor:
        total = sum(q.action_gradient(observations, actions) for q in self.q_functions)
        return total / len(self.q_functions) if self.mean else total


def compose(checkpoints: list[Path], env_id: str, out: Path, mean: bool, updates: int, seed: int, episodes: int, progress: bool = True) -> dict:
    """Train a sampler against the composed Q; write out/policy.pt and out/eval.json on `env_id`."""
    if len(checkpoints) < 2:
        raise ConfigError("compose needs at least two checkpoints")
    constituents = [SoftQLearning.from_state_dict(load_checkpoint(path), device="cpu") for path in checkpoints]
    dims = {(agent.config.obs_dim, agent.config.act_dim) for agent in constituents}
    if len(dims) != 1:
        raise ConfigError(f"checkpoints disagree on (obs_dim, act_dim): {sorted(dims)}")
    observations = np.concatenate([load_replay(path).contents()["observations"] for path in checkpoints])

    base = constituents[0].config
    config = SQLConfig(**{**vars(base), "seed": seed})
    composed = SoftQLearning(config)
    composed.q = ComposedQ([agent.q.to(composed.device) for agent in constituents], mean=mean)
    rng = np.random.default_rng(seed)
    for _ in trange(updates, disable=not progress, desc="compose", unit="update"):
        batch = observations[rng.integers(0, len(observations), size=config.batch_size)]
        composed.update_sampler(torch.as_tensor(batch, device=composed.device))

    out.mkdir(parents=True, exist_ok=True)
    save_policy(composed.sampler, out / "policy.pt")
    result = evaluate(composed, env_id, episodes, seed=seed + 10_000)
    write_eval(result, out, env_id)
    return result


def load_replay(checkpoint: Path) -> ReplayBuffer:
    """The replay buffer saved beside an agent checkpoint by `robot-sql train` (replay.npz)."""
    path = Path(checkpoint).parent / "replay.npz"
    if not path.is_file():
        raise ConfigError(f"no replay buffer beside {checkpoint} (expected {path})")
    return ReplayBuffer.load(path)


@click.command("compose")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--env", "env_name", required=True, help="Task to evaluate the composed policy on (e.g. corner).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--mean", is_flag=True, help="Average the Q-functions instead of summing them (twice the temperature; "
              "worse on the corner, docs/sql.md).")
@click.option("--updates", type=click.IntRange(min=1), default=3000, show_default=True,
              help="SVGD sampler updates (the constituents' own samplers had ~2800; 1500 fell short, docs/sql.md).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (as the learner's torch_threads; more than one is slower on a busy small machine).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def compose_command(checkpoints, env_name, out, mean, updates, seed, episodes, threads, no_progress):
    """Compose agent CHECKPOINTS (from `robot-sql train`, replay.npz beside each) into one policy."""
    torch.set_num_threads(threads)
    result = compose(list(checkpoints), resolve_env_id(env_name), out, mean, updates, seed, episodes, progress=not no_progress)
    click.echo(f"success_rate={result['success_rate']:.2f} mean_return={result['mean_return']:.2f} -> {out}")
