"""`robot-sql bench learning`: success rate against simulated robot time, SQL beside SB3 SAC.

Each (algorithm, seed) trains in its own process on one torch thread and is evaluated every
`eval_every` env steps on the same held-out episodes (env seeds from `HELD_OUT_SEED` on, never
used in training), with the policy as the actor deploys it: SQL's stochastic sampler, SAC's
stochastic policy. Success is the env's own (`terminated`: the pose held within tolerance).
SQL trains through `robot_sql.train.train` with the env's preset (plus `--config`); SAC is
Stable-Baselines3's with its defaults (256x256, batch 256, automatic entropy), as a user would
run it. Results: OUT/learning.json, OUT/learning.png and OUT/learning.md (the table). Each run
keeps OUT/<algo>-seed<N>/run.json; a rerun with the same settings reads finished runs back, so
an interrupted benchmark resumes and `--seeds` can be raised later.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import click
import gymnasium
import numpy as np

from robot_sql.config import ConfigError, load_settings

ALGORITHMS = ("sql", "sac")


def train_sql(env_id: str, seed: int, steps: int, eval_every: int, eval_episodes: int, config: Path | None,
              out: Path) -> list[dict[str, Any]]:
    from robot_sql.train import TrainSettings, train

    settings = load_settings(TrainSettings, config, seed=seed, steps=steps, eval_every=eval_every,
                             eval_every_episodes=eval_episodes, log_every=eval_every, eval_episodes=0)
    train(env_id, settings, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{key.removeprefix("eval_"): value for key, value in row.items() if key == "step" or key.startswith("eval_")}
            for row in rows if "eval_success_rate" in row]


class SacPolicy:
    """SB3 SAC behind the `act(obs)` of our policies: a stochastic action, as in training."""

    def __init__(self, model):
        self.model = model

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self.model.predict(observation, deterministic=False)[0]


def train_sac(env_id: str, seed: int, steps: int, eval_every: int, eval_episodes: int, out: Path) -> list[dict[str, Any]]:
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        raise ConfigError("SAC needs stable-baselines3: pip install -e .[bench]") from None
    from robot_sql.train import EVAL_KEYS, HELD_OUT_SEED, evaluate

    rows: list[dict[str, Any]] = []

    class PeriodicEvaluation(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every == 0:
                result = evaluate(SacPolicy(self.model), env_id, eval_episodes, seed=HELD_OUT_SEED)
                rows.append({"step": self.num_timesteps, **{key: result[key] for key in EVAL_KEYS if key in result}})
            return True

    model = SAC("MlpPolicy", gymnasium.make(env_id), seed=seed, verbose=0, device="cpu")
    model.learn(steps, callback=PeriodicEvaluation())
    model.save(out / "sac.zip")
    return rows


def effective_sql_settings(env_id: str, config: Path | None) -> dict[str, Any]:
    """The training settings an SQL run gets: the --config file's over the env's preset."""
    from robot_sql.train import TrainSettings, preset

    settings = load_settings(TrainSettings, config).model_dump(mode="json")
    for key in ("seed", "steps", "eval_every", "eval_every_episodes", "log_every", "eval_episodes"):
        settings.pop(key)  # set per run by the benchmark
    settings["updates_per_step"] = settings["updates_per_step"] or preset(env_id).updates_per_step
    settings["sql"] = {**preset(env_id).sql, **settings["sql"]}
    return settings


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (algorithm, seed): train, evaluate periodically, return the evaluations. A run already
    finished in OUT with the same settings is read back instead (a long benchmark can be resumed)."""
    import torch

    out = Path(job["out"]) / f"{job['algo']}-seed{job['seed']}"
    done = out / "run.json"
    # matched on what the run does, not where its files are: sql_settings holds the --config's effect
    settings = json.loads(json.dumps({key: value for key, value in job.items() if key not in ("out", "config")}))
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous["job"] == settings:
            return {**previous["run"], "reused": True}
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    common = (job["env"], job["seed"], job["steps"], job["eval_every"], job["eval_episodes"])
    if job["algo"] == "sql":
        evaluations = train_sql(*common, Path(job["config"]) if job["config"] else None, out)
    else:
        evaluations = train_sac(*common, out)
    run = {"algo": job["algo"], "seed": job["seed"], "wall_s": round(time.perf_counter() - started, 1),
           "evaluations": evaluations}
    done.write_text(json.dumps({"job": settings, "run": run}) + "\n")
    return run


def summarise(runs: list[dict[str, Any]], minutes_per_step: float) -> list[dict[str, Any]]:
    """Per algorithm and evaluation step: median (and range) over seeds of success and final errors."""
    table = []
    for algo in sorted({run["algo"] for run in runs}):
        by_step: dict[int, list[dict]] = {}
        for run in runs:
            if run["algo"] == algo:
                for evaluation in run["evaluations"]:
                    by_step.setdefault(evaluation["step"], []).append(evaluation)
        for step, evaluations in sorted(by_step.items()):
            success = [e["success_rate"] for e in evaluations]
            row = {"algo": algo, "step": step, "minutes": round(step * minutes_per_step, 2), "seeds": len(evaluations),
                   "success_median": float(np.median(success)), "success_min": min(success), "success_max": max(success)}
            if "final_position_error" in evaluations[0]:
                row["position_error_median"] = float(np.median([e["final_position_error"] for e in evaluations]))
                row["orientation_error_median"] = float(np.median([e["final_orientation_error"] for e in evaluations]))
            table.append(row)
    return table


def markdown_table(summary: list[dict[str, Any]]) -> str:
    lines = ["| algorithm | steps | simulated min | success, median (min-max) | final distance, median | final angle, median |",
             "|---|---|---|---|---|---|"]
    for row in summary:
        distance = f"{row['position_error_median'] * 1000:.1f} mm" if "position_error_median" in row else "-"
        angle = f"{np.degrees(row['orientation_error_median']):.1f} deg" if "orientation_error_median" in row else "-"
        lines.append(f"| {row['algo'].upper()} | {row['step']} | {row['minutes']:g} | {row['success_median']:.2f} "
                     f"({row['success_min']:.2f}-{row['success_max']:.2f}) | {distance} | {angle} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], summary: list[dict[str, Any]], minutes_per_step: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (success_axis, distance_axis) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"sql": "tab:blue", "sac": "tab:orange"}
    for run in runs:  # each seed, thin
        minutes = [e["step"] * minutes_per_step for e in run["evaluations"]]
        success_axis.plot(minutes, [e["success_rate"] for e in run["evaluations"]], color=colours[run["algo"]], alpha=0.3, lw=1)
        if run["evaluations"] and "final_position_error" in run["evaluations"][0]:
            distance_axis.plot(minutes, [e["final_position_error"] * 1000 for e in run["evaluations"]],
                               color=colours[run["algo"]], alpha=0.3, lw=1)
    for algo in sorted({row["algo"] for row in summary}):  # the median over seeds, thick
        rows = [row for row in summary if row["algo"] == algo]
        minutes = [row["minutes"] for row in rows]
        success_axis.plot(minutes, [row["success_median"] for row in rows], color=colours[algo], lw=2.5,
                          label=f"{algo.upper()} (median of {rows[0]['seeds']} seeds)")
        if "position_error_median" in rows[0]:
            distance_axis.plot(minutes, [row["position_error_median"] * 1000 for row in rows], color=colours[algo], lw=2.5,
                               label=algo.upper())
    success_axis.set(xlabel="simulated robot time (min)", ylabel="success rate (held-out episodes)", ylim=(-0.02, 1.02), title=title)
    distance_axis.set(xlabel="simulated robot time (min)", ylabel="final hand distance (mm)", yscale="log", title="where episodes end")
    success_axis.legend(loc="lower right")
    for axis in (success_axis, distance_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@click.command("learning")
@click.option("--env", "env_name", required=True, help="Environment name or gymnasium id (e.g. sawyer-reach).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds K..K+N-1 of each algorithm.")
@click.option("--first-seed", type=click.IntRange(min=0), default=0, show_default=True, help="K, the first seed.")
@click.option("--steps", type=click.IntRange(min=1), required=True, help="Env steps per run.")
@click.option("--algos", default="sql,sac", show_default=True, help="Comma-separated: sql, sac.")
@click.option("--eval-every", type=click.IntRange(min=1), default=3000, show_default=True, help="Env steps between evaluations.")
@click.option("--eval-episodes", type=click.IntRange(min=1), default=100, show_default=True, help="Held-out episodes per evaluation.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML of robot-sql train settings for the SQL runs (e.g. sql: {...}, updates_per_step).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs in parallel, one CPU thread each.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def bench_learning_command(env_name, seeds, first_seed, steps, algos, eval_every, eval_episodes, config, jobs, out):
    """Train SQL and SAC on ENV over several seeds; success rate and final distance against simulated minutes."""
    from robot_sql.train import HELD_OUT_SEED, resolve_env_id

    env_id = resolve_env_id(env_name)
    chosen = [name.strip() for name in algos.split(",") if name.strip()]
    if not chosen or set(chosen) - set(ALGORITHMS):
        raise ConfigError(f"--algos must list some of {', '.join(ALGORITHMS)}, got {algos!r}")
    if config is not None and not config.is_file():
        raise ConfigError(f"--config file not found: {config}")
    env = gymnasium.make(env_id)
    minutes_per_step = 1.0 / getattr(env.unwrapped, "control_hz", 60.0) / 60.0
    env.close()
    out.mkdir(parents=True, exist_ok=True)
    sql_settings = effective_sql_settings(env_id, config)  # what a finished SQL run is matched on
    job_list = [{"algo": algo, "seed": seed, "env": env_id, "steps": steps, "eval_every": eval_every,
                 "eval_episodes": eval_episodes, "out": str(out),
                 **({"config": str(config) if config else None, "sql_settings": sql_settings} if algo == "sql" else {})}
                for seed in range(first_seed, first_seed + seeds) for algo in chosen]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(job_list))) as pool:
        runs = []
        for run in pool.imap_unordered(run_one, job_list):
            runs.append(run)
            click.echo(f"{run['algo']} seed {run['seed']}: {'read back' if run.get('reused') else 'done'} in {run['wall_s']:.0f} s, "
                       f"final success {run['evaluations'][-1]['success_rate'] if run['evaluations'] else '-'}")
    runs.sort(key=lambda run: (run["algo"], run["seed"]))
    summary = summarise(runs, minutes_per_step)
    result = {"env": env_id, "steps": steps, "seeds": list(range(first_seed, first_seed + seeds)), "eval_every": eval_every, "eval_episodes": eval_episodes,
              "held_out_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + eval_episodes - 1],
              "minutes_per_step": minutes_per_step, "sql_config": str(config) if config else None, "sql_settings": sql_settings,
              "wall_s": round(time.perf_counter() - started, 1), "summary": summary, "runs": runs}
    (out / "learning.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown_table(summary)
    (out / "learning.md").write_text(table)
    plot(runs, summary, minutes_per_step, env_id, out / "learning.png")
    click.echo(table + f"-> {out}/learning.json, learning.png, learning.md")
