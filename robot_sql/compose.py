"""Composition of soft Q-functions: `robot-sql compose` (Haarnoja et al., ICRA 2018).

Given SQL agents trained on constituent tasks, a fresh sampler is trained by SVGD against
Q_sum = sum_i Q_i (or their mean, as in the ICRA paper) with every Q_i frozen, on the
observations of the union of the constituents' replay buffers: no new environment steps.
Q_sum is built as one QNetwork (`side_by_side`), so the composed agent is an agent like any
other: the learner can start a run from it (`init`) and keep training on the combined task.
For max-entropy policies Q_sum bounds the optimal Q of the task with the summed reward:
Q_sum >= Q*_C >= Q_sum - C*, C* set by the policies' divergence (ICRA 2018, sec. IV).
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from tqdm import trange

from robot_sql.config import ConfigError
from robot_sql.replay import ReplayBuffer
from robot_sql.sql import QNetwork, SoftQLearning, SQLConfig, linears, save_policy
from robot_sql.train import evaluate, preset, resolve_env_id, write_eval


def side_by_side(q_functions: list[QNetwork], mean: bool = False) -> QNetwork:
    """One QNetwork whose heads compute sum_i Q_i (or the mean): the constituents' hidden layers
    side by side, with block-diagonal weights so that no unit sees another constituent's units,
    and their output layers added. Exact for single-head Q-functions; with twin heads, head h is
    the sum of the constituents' heads h, and the min is taken over those sums."""
    shapes = {(q.obs_dim, q.act_dim, len(q.heads), len(q.hidden_sizes)) for q in q_functions}
    if len(shapes) != 1:
        raise ConfigError(f"constituent Q-networks differ in observation or action size, heads or depth: {sorted(shapes)}")
    hidden = tuple(map(sum, zip(*(q.hidden_sizes for q in q_functions))))  # widths add up, layer by layer
    first = q_functions[0]
    merged = QNetwork(first.obs_dim, first.act_dim, hidden, twin=len(first.heads) == 2)
    scale = 1.0 / len(q_functions) if mean else 1.0
    with torch.no_grad():
        for h, head in enumerate(merged.heads):
            parts = [linears(q.heads[h], start=0) for q in q_functions]
            target = linears(head, start=0)
            target[0].weight.copy_(torch.cat([p[0].weight for p in parts], dim=0))  # every unit sees [s, a]
            target[0].bias.copy_(torch.cat([p[0].bias for p in parts]))
            for k in range(1, len(target) - 1):
                target[k].weight.copy_(torch.block_diag(*[p[k].weight for p in parts]))
                target[k].bias.copy_(torch.cat([p[k].bias for p in parts]))
            target[-1].weight.copy_(scale * torch.cat([p[-1].weight for p in parts], dim=1))
            target[-1].bias.copy_(scale * sum(p[-1].bias for p in parts))
    return merged


def compose(checkpoints: list[Path], env_id: str, out: Path, mean: bool, updates: int, seed: int, episodes: int, progress: bool = True) -> dict:
    """Train a sampler against the composed Q; write out/agent.pt (composed Q and sampler: the learner's
    `init`), out/policy.pt and out/eval.json on `env_id`."""
    if len(checkpoints) < 2:
        raise ConfigError("compose needs at least two checkpoints")
    constituents = [SoftQLearning.load(path, device="cpu") for path in checkpoints]
    dims = {(agent.config.obs_dim, agent.config.act_dim) for agent in constituents}
    if len(dims) != 1:
        raise ConfigError(f"checkpoints disagree on (obs_dim, act_dim): {sorted(dims)}")
    observations = np.concatenate([load_replay(path).contents()["observations"] for path in checkpoints])

    q = side_by_side([agent.q for agent in constituents], mean=mean)
    base = constituents[0].config
    config = SQLConfig(**{**vars(base), "seed": seed, "q_hidden_sizes": q.hidden_sizes})
    composed = SoftQLearning(config)
    composed.q.load_state_dict(q.state_dict())
    composed.q_target.load_state_dict(q.state_dict())  # the Q-function stays fixed: only the sampler learns
    rng = np.random.default_rng(seed)
    for _ in trange(updates, disable=not progress, desc="compose", unit="update"):
        batch = observations[rng.integers(0, len(observations), size=config.batch_size)]
        composed.update_sampler(torch.as_tensor(batch, device=composed.device))

    out.mkdir(parents=True, exist_ok=True)
    composed.save(out / "agent.pt")
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
@click.option("--updates", type=click.IntRange(min=1),
              help="SVGD sampler updates; default: the --env task's preset (3000 on the 2-D tasks, 15,000 on the arm).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (as the learner's torch_threads; more than one is slower on a busy small machine).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def compose_command(checkpoints, env_name, out, mean, updates, seed, episodes, threads, no_progress):
    """Compose agent CHECKPOINTS (from `robot-sql train`, replay.npz beside each) into one policy."""
    torch.set_num_threads(threads)
    env_id = resolve_env_id(env_name)
    updates = updates or preset(env_id).compose_updates
    result = compose(list(checkpoints), env_id, out, mean, updates, seed, episodes, progress=not no_progress)
    click.echo(f"success_rate={result['success_rate']:.2f} mean_return={result['mean_return']:.2f} -> {out}")
