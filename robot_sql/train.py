"""Single-process SQL training and evaluation on a gymnasium env: `robot-sql train` and `robot-sql eval`.

The training loop is the reference code's: one environment step, then (once the pool holds
`min_pool_size` transitions) `updates_per_step` SQL updates on uniformly sampled batches.
Exploration comes from the sampler's noise alone; evaluation uses the same stochastic policy.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import click
import gymnasium
import numpy as np
import torch
from pydantic import Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict
from tqdm import tqdm

import robot_sql  # noqa: F401  (registers the environments)
from robot_sql.config import ConfigError, Settings, dump_settings, load_settings
from robot_sql.replay import ReplayBuffer
from robot_sql.sql import CHECKPOINT_READ_ERRORS, Sampler, SoftQLearning, SQLConfig, load_policy

# Short names for the command line.
ENV_ALIASES = {
    "multigoal": "MultiGoal-v0",
    "line-x": "PointLineX-v0",
    "line-y": "PointLineY-v0",
    "corner": "PointCorner-v0",
    "run": "PointRun-v0",
    "single-goal": "PointSingleGoal-v0",
    "sawyer-reach": "SawyerReach-v0",
    "sawyer-reach-near": "SawyerReachNear-v0",
    "sawyer-lego": "SawyerLegoStack-v0",
    "sawyer-stack": "SawyerStack-v0",
    "sawyer-avoid": "SawyerAvoid-v0",
    "sawyer-stack-avoid": "SawyerStackAvoid-v0",
    "sawyer-pretrain": "SawyerPretrain-v0",
}

@dataclass(frozen=True)
class Preset:
    """What an env trains with unless told otherwise (`robot-sql train` and the learner alike):
    SQLConfig values, SQL updates per env step (the update-to-data ratio), and the SVGD updates
    `robot-sql compose` trains a composed sampler with when this env is the combined task."""

    sql: dict[str, Any] = field(default_factory=dict)
    updates_per_step: int = 1
    compose_updates: int = 3000  # the 2-D constituents' own samplers had ~2800; 1500 fell short (docs/sql.md)


# MultiGoal: examples/multigoal_sql.py of the reference code.
POINT_MASS = {"reward_scale": 0.1, "kernel_particles": 32, "value_particles": 16, "batch_size": 64, "hidden_sizes": (128, 128)}
# Sawyer pose tasks: rewards are -1 per 10 cm, so a step (1/20 s) that gains 1 cm changes the reward
# by only 0.1, small beside the entropy of 7 action dimensions at alpha = 1: reward_scale 10. The
# reward is dense, so a short horizon (discount 0.9, 0.5 s) suffices and keeps |Q| small; with
# lr 1e-3 and a target copy every 250 updates the value follows quickly. 64-unit layers are 3x
# cheaper than 128 on a CPU. Several updates per env step, since robot time is what is scarce: with
# one, Reach was at 0.11 success after 18,000 steps; with four 0.95 (Lego: 0.99-1.0 at 36,000 on 3 seeds);
# with eight, Reach is at 0.85-1.0 after 9,000. Measured, one change at a time: docs/sim.md.
# A composed sampler on the arm: 3000 SVGD updates left it 1.3 cm short of the brick (0.35 success),
# 15,000 at 0.91 (seed 0; its constituents had ~47,000 each; docs/sql.md, "Composition on the arm").
SAWYER = Preset({"reward_scale": 10.0, "discount": 0.9, "q_lr": 1e-3, "policy_lr": 1e-3, "hidden_sizes": (64, 64),
                 "batch_size": 64, "target_update_interval": 250}, updates_per_step=4, compose_updates=15000)
SAWYER_REACH = replace(SAWYER, updates_per_step=8)  # the full box: many more targets to generalise over
PRESETS: dict[str, Preset] = {
    "MultiGoal-v0": Preset(POINT_MASS),
    "PointLineX-v0": Preset({**POINT_MASS, "reward_scale": 3.0, "discount": 0.9}),
    "PointLineY-v0": Preset({**POINT_MASS, "reward_scale": 3.0, "discount": 0.9}),
    "PointCorner-v0": Preset({**POINT_MASS, "reward_scale": 3.0, "discount": 0.9}),
    "PointRun-v0": Preset({**POINT_MASS, "reward_scale": 1.0, "discount": 0.9}),
    "PointSingleGoal-v0": Preset({**POINT_MASS, "reward_scale": 1.0}),
    "SawyerReach-v0": SAWYER_REACH,
    "SawyerReachNear-v0": SAWYER,  # CI's budget: measured at four (tests/test_sim_learning.py)
    "SawyerLegoStack-v0": SAWYER,
    "SawyerStack-v0": SAWYER,
    "SawyerAvoid-v0": SAWYER,
    "SawyerStackAvoid-v0": SAWYER,
    # networks and training settings as the tasks it pretrains for, so a checkpoint fine-tunes on them
    "SawyerPretrain-v0": SAWYER,
}


def preset(env_id: str) -> Preset:
    return PRESETS.get(env_id, Preset())


def resolve_env_id(name: str) -> str:
    env_id = ENV_ALIASES.get(name, name)
    if env_id not in gymnasium.registry:
        known = ", ".join(sorted(ENV_ALIASES))
        raise ConfigError(f"unknown environment {name!r}; use one of {known} or a registered gymnasium id")
    return env_id


def env_alias(env_id: str) -> str:
    return next((alias for alias, target in ENV_ALIASES.items() if target == env_id), env_id)


# Periodic evaluations reset their envs with seeds from here on: training seeds only its first reset
# (the env's own generator draws every later episode), so these episodes are never trained on.
HELD_OUT_SEED = 1_000_000


class TrainSettings(Settings):
    """Settings of `robot-sql train` (YAML keys; env vars ROBOT_SQL_TRAIN_<KEY>)."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_TRAIN_", env_nested_delimiter="__", extra="forbid")

    seed: int = 0
    steps: int = Field(6000, ge=1, description="environment steps")
    min_pool_size: int = Field(200, ge=1, description="transitions collected before the first update")
    updates_per_step: int | None = Field(None, ge=1, description="SQL updates per env step; default: the env's preset")
    replay_capacity: int = Field(1_000_000, ge=1)
    eval_episodes: int = Field(100, ge=0, description="episodes of the final evaluation (eval.json); 0: none")
    log_every: int = Field(500, ge=1, description="steps between metrics.jsonl rows")
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations logged as eval_success_rate")
    eval_every_episodes: int = Field(20, ge=1)
    eval_seed: int = Field(HELD_OUT_SEED, ge=0, description="env seed of the first periodic evaluation episode")
    sql: dict[str, Any] = Field(default_factory=dict, description="SQLConfig overrides on top of the env preset")
    anneal_reward_scale_to: float | None = Field(
        None, gt=0, description="fine-tuning: anneal reward_scale log-linearly to this value (paper sec. 5)"
    )
    anneal_steps: int = Field(2000, ge=1)
    torch_threads: int = Field(1, ge=1, description="CPU threads for torch (as the learner's torch_threads)")

    @field_validator("sql")
    @classmethod
    def _known_sql_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {f.name for f in fields(SQLConfig)} - {"obs_dim", "act_dim"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown SQL settings {unknown}; allowed: {sorted(allowed)}")
        return value


SQL_CONFIG = TypeAdapter(SQLConfig)


def make_sql_config(env: gymnasium.Env, env_id: str, overrides: dict[str, Any], seed: int) -> SQLConfig:
    check_box_spaces(env, env_id)
    values = {**preset(env_id).sql, **overrides, "seed": seed,
              "obs_dim": env.observation_space.shape[0], "act_dim": env.action_space.shape[0]}
    try:  # through pydantic: values from environment variables arrive as strings ("64" -> 64)
        return SQL_CONFIG.validate_python(values)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc']) or 'sql'}: {item['msg']}" for item in error.errors())
        raise ConfigError(f"invalid SQL settings: {problems}") from error


def initial_agent(path: Path, env: gymnasium.Env, env_id: str, overrides: dict[str, Any],
                  device: str = "auto") -> SoftQLearning:
    """The agent of a checkpoint (train's or compose's agent.pt, a learner's learner.pt) to go on training on `env_id`, with the
    `overrides` of its training settings (its networks stay as they are); a mismatch is a ConfigError."""
    try:
        agent = SoftQLearning.load(path, device=device)
    except CHECKPOINT_READ_ERRORS as error:
        raise ConfigError(f"init checkpoint {path}: not an agent checkpoint ({type(error).__name__}: {error})") from error
    expected = (env.observation_space.shape[0], env.action_space.shape[0])
    if (agent.config.obs_dim, agent.config.act_dim) != expected:
        raise ConfigError(f"init checkpoint {path} has (obs, act) dims {(agent.config.obs_dim, agent.config.act_dim)}, "
                          f"{env_id} needs {expected}")
    try:
        agent.reconfigure(overrides)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"init checkpoint {path} with sql overrides: {error}") from error
    return agent


def check_box_spaces(env: gymnasium.Env, env_id: str) -> None:
    obs_space, act_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, gymnasium.spaces.Box) and len(obs_space.shape) == 1):
        raise ConfigError(f"{env_id}: SQL needs a flat Box observation space, got {obs_space}")
    if not (isinstance(act_space, gymnasium.spaces.Box) and np.allclose(act_space.low, -1) and np.allclose(act_space.high, 1)):
        raise ConfigError(f"{env_id}: SQL needs a Box action space on [-1, 1]^D, got {act_space}")


def reward_scale_at(step: int, start: float, end: float, steps: int) -> float:
    """Log-linear interpolation from `start` to `end` over `steps` (alpha annealing of the paper)."""
    fraction = min(step / steps, 1.0)
    if fraction == 1.0:
        return end
    return math.exp((1 - fraction) * math.log(start) + fraction * math.log(end))


def train(env_id: str, settings: TrainSettings, out: Path, init: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, then write out/agent.pt, out/replay.npz, out/metrics.jsonl, out/eval.json and a plot."""
    out.mkdir(parents=True, exist_ok=True)
    dump_settings(settings, out / "config.yaml")
    torch.set_num_threads(settings.torch_threads)
    env = gymnasium.make(env_id)
    if init is not None:
        agent = initial_agent(init, env, env_id, settings.sql)
    else:
        agent = SoftQLearning(make_sql_config(env, env_id, settings.sql, settings.seed))
    start_scale = agent.config.reward_scale
    updates_per_step = settings.updates_per_step or preset(env_id).updates_per_step
    replay = ReplayBuffer(agent.config.obs_dim, agent.config.act_dim, settings.replay_capacity)
    rng = np.random.default_rng(settings.seed)

    obs, _ = env.reset(seed=settings.seed)
    episode_return, episode_returns, episode_successes = 0.0, [], []
    episode_collisions = []  # the obstacle tasks: steps each training episode touched the obstacle
    last_metrics: dict[str, float] = {}
    started = time.perf_counter()
    with (out / "metrics.jsonl").open("w") as log, tqdm(total=settings.steps, disable=not progress, desc=env_alias(env_id), unit="step") as bar:
        for step in range(1, settings.steps + 1):
            action = agent.act(obs)
            next_obs, reward, terminated, truncated, info = env.step(action)
            replay.add(obs, action, reward, next_obs, terminated)
            episode_return += reward
            obs = next_obs
            if terminated or truncated:
                episode_returns.append(episode_return)
                episode_successes.append(float(info.get("is_success", terminated)))
                if "collision_steps" in info:
                    episode_collisions.append(info["collision_steps"])
                episode_return = 0.0
                obs, _ = env.reset()

            if settings.anneal_reward_scale_to is not None:
                agent.config.reward_scale = reward_scale_at(step, start_scale, settings.anneal_reward_scale_to, settings.anneal_steps)
            if len(replay) >= settings.min_pool_size:
                for _ in range(updates_per_step):
                    last_metrics = agent.update(replay.sample(agent.config.batch_size, rng))

            evaluate_now = settings.eval_every is not None and step % settings.eval_every == 0
            if evaluate_now or step % settings.log_every == 0 or step == settings.steps:
                recent = slice(-20, None)
                row = {
                    "step": step,
                    "time": round(time.perf_counter() - started, 3),
                    "updates": agent.updates,
                    "episodes": len(episode_returns),
                    "episode_return": float(np.mean(episode_returns[recent])) if episode_returns else None,
                    "success_rate": float(np.mean(episode_successes[recent])) if episode_successes else None,
                    "reward_scale": agent.config.reward_scale,
                    **last_metrics,
                }
                if episode_collisions:  # what training cost in touches: the last 20 episodes', and all so far
                    touched = np.asarray(episode_collisions) > 0
                    row.update(collision_rate=float(np.mean(touched[recent])), collision_episodes=int(touched.sum()))
                if evaluate_now:
                    periodic = evaluate(agent, env_id, settings.eval_every_episodes, seed=settings.eval_seed)
                    row.update({f"eval_{key}": periodic[key] for key in EVAL_KEYS if key in periodic})
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(ret=row["episode_return"], q_loss=last_metrics.get("q_loss"))
            bar.update(1)

    agent.save(out / "agent.pt")
    replay.save(out / "replay.npz")
    if not settings.eval_episodes:
        return {}
    result = evaluate(agent, env_id, settings.eval_episodes, seed=settings.seed + 10_000)
    write_eval(result, out, env_id)
    return result


# what a periodic evaluation adds to its metrics.jsonl row, as eval_<key>
EVAL_KEYS = ("success_rate", "mean_return", "final_position_error", "final_orientation_error", "collision_rate")


def evaluate(policy: SoftQLearning | Sampler, env_id: str, episodes: int, seed: int) -> dict[str, Any]:
    """Roll out the stochastic policy; success is the env's info["is_success"] at the episode's end.

    SQL policies draw their noise from a generator of the evaluation's own, seeded by `seed`: the
    same episodes every time, and a training run's random numbers untouched by its evaluations.
    Any other policy (SB3's, in the benchmarks) is called as `policy.act(observation)`."""
    sampler = policy.sampler if isinstance(policy, SoftQLearning) else policy
    if isinstance(sampler, Sampler):
        generator = torch.Generator(device=sampler.obs_layer.weight.device).manual_seed(seed)
        act = lambda observation: sampler.act(observation, generator=generator)  # noqa: E731
    else:
        act = policy.act
    env = gymnasium.make(env_id)
    returns, successes, trajectories, final_errors, collision_steps = [], [], [], [], []
    goal_counts = None
    goal_index = getattr(env.unwrapped, "goal_index", None)
    if goal_index is not None:
        goal_counts = [0] * len(env.unwrapped.goals)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        path, total, done, info = [obs.copy()], 0.0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            path.append(obs.copy())
            total += reward
            done = terminated or truncated
        returns.append(total)
        successes.append(bool(info.get("is_success", False)))
        if "collision_steps" in info:
            collision_steps.append(info["collision_steps"])
        trajectories.append(np.asarray(path))
        if "position_error" in info:
            final_errors.append((info["position_error"], info["orientation_error"]))
        if goal_counts is not None and (reached := goal_index(obs)) is not None:
            goal_counts[reached] += 1
    result = {
        "env": env_id,
        "episodes": episodes,
        "success_rate": float(np.mean(successes)),
        "mean_return": float(np.mean(returns)),
        "goal_counts": goal_counts,
    }
    if final_errors:  # pose tasks: where the episodes ended (median over episodes)
        position, orientation = np.median(np.asarray(final_errors), axis=0)
        result.update(final_position_error=float(position), final_orientation_error=float(orientation))
    if collision_steps:  # the obstacle tasks: episodes that touched the obstacle at least once
        result.update(collision_rate=float(np.mean(np.asarray(collision_steps) > 0)),
                      mean_collision_steps=float(np.mean(collision_steps)))
    result["trajectories"] = trajectories  # for the plot; not written to eval.json
    return result


def write_eval(result: dict[str, Any], out: Path, env_id: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {key: value for key, value in result.items() if key != "trajectories"}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    if result["trajectories"][0].shape[-1] == 2:  # the 2-D point tasks
        from robot_sql.plots import plot_point_trajectories

        plot_point_trajectories(env_id, result["trajectories"], out / f"{env_alias(env_id)}.png")


@click.command("train")
@click.argument("env")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--steps", type=int, default=None, help="Environment steps (default 6000).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="YAML file of TrainSettings.")
@click.option("--init", type=click.Path(path_type=Path), default=None, help="Fine-tune from this agent checkpoint.")
@click.option("--anneal-reward-scale-to", type=float, default=None, help="Anneal reward_scale log-linearly to this value.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train_command(env, seed, steps, out, config_path, init, anneal_reward_scale_to, no_progress):
    """Train SQL on ENV (multigoal, line-x, line-y, corner, run, single-goal, or a gymnasium id).

    Writes OUT/agent.pt, OUT/replay.npz, OUT/metrics.jsonl, OUT/eval.json and, for the 2-D tasks,
    OUT/<env>.png with evaluation trajectories.
    """
    env_id = resolve_env_id(env)
    if init is not None and not init.is_file():
        raise ConfigError(f"--init checkpoint not found: {init}")
    settings = load_settings(TrainSettings, config_path, seed=seed, steps=steps, anneal_reward_scale_to=anneal_reward_scale_to)
    result = train(env_id, settings, out, init=init, progress=not no_progress)
    if result:
        click.echo(f"success_rate={result['success_rate']:.2f} mean_return={result['mean_return']:.2f} goal_counts={result['goal_counts']} -> {out}")


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--env", "env_name", required=True, help="Environment name or gymnasium id.")
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=10_000, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (as the learner's torch_threads).")
def eval_command(checkpoint, env_name, episodes, seed, out, threads):
    """Evaluate an agent or policy checkpoint; writes OUT/eval.json (and a trajectory plot for 2-D tasks)."""
    torch.set_num_threads(threads)
    env_id = resolve_env_id(env_name)
    try:
        policy = load_policy(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from error
    result = evaluate(policy, env_id, episodes, seed)
    write_eval(result, out, env_id)
    click.echo(f"success_rate={result['success_rate']:.2f} mean_return={result['mean_return']:.2f} goal_counts={result['goal_counts']} -> {out}")
