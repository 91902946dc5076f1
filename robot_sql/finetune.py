"""Fine-tuning from a max-entropy pretrained policy (paper, section 5): `robot-sql finetune-report`.

For each seed: pretrain on a general task (by default PointRun-v0, move fast in any direction;
on the arm SawyerPretrain-v0, move the hand fast), then train the target task (by default
PointSingleGoal-v0; on the arm SawyerReachNear-v0 or SawyerReach-v0) three times, evaluating
every `eval_every` steps on held-out episodes: from the pretrained agent with reward_scale
annealed log-linearly to `anneal_to` (alpha annealed, as in the paper); from scratch; and from
scratch with the same annealing (which separates the effect of pretraining from annealing).

Every run trains with its env's preset (robot_sql.train.PRESETS) through `train`: the scratch
runs with the target env's, the pretraining run with the pretrain env's. The fine-tuned agent
keeps its checkpoint's networks and SQL settings (`train(..., init=...)`), except reward_scale,
which is annealed from the checkpoint's value, and it takes the target env's updates per step;
the report lists where its SQL settings differ from the scratch runs'. Reports the environment
steps each needs to reach 80 % and 95 % success (and `threshold`), with a plot.

A run already finished in OUT with the same settings is read back instead of trained again,
so a report can be resumed or extended by seeds; `jobs` runs train in parallel processes.
"""
from __future__ import annotations

import json
import multiprocessing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from robot_sql.config import load_settings
from robot_sql.train import TrainSettings, env_alias, resolve_env_id, train

PRETRAIN_ENV, TARGET_ENV = "PointRun-v0", "PointSingleGoal-v0"
KINDS = {"finetuned": "tab:blue", "scratch": "tab:orange", "scratch_annealed": "tab:green"}
LABELS = {"finetuned": "fine-tuned (annealed)", "scratch": "from scratch", "scratch_annealed": "from scratch, annealed"}
LEVELS = (0.8, 0.95)  # success levels always reported (the issue's), besides `threshold`


def eval_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "eval_success_rate" in row]
    return [row["step"] for row in rows], [row["eval_success_rate"] for row in rows]


def steps_to_threshold(steps: list[int], success: list[float], threshold: float) -> int | None:
    return next((step for step, rate in zip(steps, success) if rate >= threshold), None)


def level_key(level: float) -> str:
    return f"{level:g}"


def anneal_steps(steps: int) -> int:
    return max(steps // 2, 1)  # the first half of the target task's budget


def run_settings(job: dict[str, Any]) -> TrainSettings:
    """The TrainSettings of one run of the report (`job`: kind, seed, steps, budgets)."""
    if job["kind"] == "pretrain":
        return load_settings(TrainSettings, seed=job["seed"], steps=job["pretrain_steps"], eval_episodes=20)
    common = dict(seed=job["seed"], steps=job["steps"], eval_every=job["eval_every"], eval_every_episodes=20,
                  eval_episodes=50, log_every=job["eval_every"])
    if job["kind"] == "scratch":
        return load_settings(TrainSettings, **common)
    return load_settings(TrainSettings, anneal_reward_scale_to=job["anneal_to"], anneal_steps=anneal_steps(job["steps"]), **common)


def train_once(env_id: str, settings: TrainSettings, run_dir: Path, init: Path | None = None,
               identity: dict[str, Any] | None = None) -> bool:
    """Train unless run_dir holds a finished run of the same identity; True when it trained."""
    done = run_dir / "finetune-run.json"
    identity = {"env": env_id, "settings": settings.model_dump(mode="json"), **(identity or {})}
    if done.is_file() and (run_dir / "agent.pt").is_file() and json.loads(done.read_text()) == identity:
        return False
    done.unlink(missing_ok=True)
    train(env_id, settings, run_dir, init=init, progress=False)
    done.write_text(json.dumps(identity) + "\n")
    return True


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One seed's fine-tuned run (its pretraining first) or one from-scratch run."""
    out, seed = Path(job["out"]), job["seed"]
    trained = []
    if job["kind"] == "finetuned":
        pretrain_job = {**job, "kind": "pretrain"}
        pretrained = out / f"pretrain-seed{seed}"
        pretrain_identity = {"env": job["pretrain_env"], "settings": run_settings(pretrain_job).model_dump(mode="json")}
        if train_once(job["pretrain_env"], run_settings(pretrain_job), pretrained):
            trained.append("pretrain")
        identity = {"init": pretrain_identity}
        init = pretrained / "agent.pt"
    else:
        identity, init = {}, None
    if train_once(job["target_env"], run_settings(job), out / f"{job['kind']}-seed{seed}", init=init, identity=identity):
        trained.append(job["kind"])
    return {"kind": job["kind"], "seed": seed, "trained": trained}


def run_summary(run_dir: Path, levels: list[float], threshold: float) -> dict[str, Any]:
    curve_steps, success = eval_curve(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() else {}
    return {"steps": curve_steps, "success": success,
            "steps_to_threshold": steps_to_threshold(curve_steps, success, threshold),
            "steps_to": {level_key(level): steps_to_threshold(curve_steps, success, level) for level in levels},
            "final_success_rate": final.get("success_rate"),  # eval_episodes held-out episodes after training
            "wall_s": rows[-1]["time"] if rows else None}


def sql_config(run_dir: Path) -> dict[str, Any]:
    from robot_sql.sql import SoftQLearning, load_checkpoint

    return asdict(SoftQLearning.from_state_dict(load_checkpoint(run_dir / "agent.pt")).config)


def finetune_report(seeds: list[int], pretrain_steps: int, steps: int, eval_every: int, threshold: float,
                    anneal_to: float, out: Path, pretrain_env: str = PRETRAIN_ENV, target_env: str = TARGET_ENV,
                    jobs: int = 1, echo=None) -> dict:
    pretrain_env, target_env = resolve_env_id(pretrain_env), resolve_env_id(target_env)
    out.mkdir(parents=True, exist_ok=True)
    levels = sorted({*LEVELS, threshold})
    job_list = [{"kind": kind, "seed": seed, "out": str(out), "pretrain_env": pretrain_env, "target_env": target_env,
                 "pretrain_steps": pretrain_steps, "steps": steps, "eval_every": eval_every, "anneal_to": anneal_to}
                for kind in KINDS for seed in seeds]  # the fine-tuned runs (the longest, with pretraining) first
    if jobs > 1 and len(job_list) > 1:
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(job_list))) as pool:
            for done in pool.imap_unordered(run_job, job_list):
                if echo:
                    echo(f"{done['kind']} seed {done['seed']}: {'trained ' + ', '.join(done['trained']) if done['trained'] else 'read back'}")
    else:
        for job in job_list:
            run_job(job)

    runs = {kind: {seed: run_summary(out / f"{kind}-seed{seed}", levels, threshold) for seed in seeds} for kind in KINDS}
    finetuned_sql, scratch_sql = sql_config(out / f"finetuned-seed{seeds[0]}"), sql_config(out / f"scratch-seed{seeds[0]}")
    report = {
        "pretrain_env": pretrain_env, "target_env": target_env, "seeds": seeds, "pretrain_steps": pretrain_steps,
        "steps": steps, "eval_every": eval_every, "eval_every_episodes": 20, "threshold": threshold, "levels": levels,
        "anneal_reward_scale_to": anneal_to, "anneal_steps": anneal_steps(steps),
        "scratch_sql": {key: value for key, value in scratch_sql.items() if key != "seed"},
        # what the fine-tuned agent learns with that the scratch runs do not (reward_scale: at the end)
        "finetuned_sql_differs": {key: value for key, value in finetuned_sql.items()
                                  if key not in ("seed", "reward_scale") and value != scratch_sql[key]},
        "pretrain_reward_scale": sql_config(out / f"pretrain-seed{seeds[0]}")["reward_scale"],
        "runs": runs,
    }
    for kind in runs:
        reached = [run["steps_to_threshold"] for run in runs[kind].values()]
        report[f"{kind}_steps_to_threshold"] = reached
        report[f"{kind}_mean_steps_to_threshold"] = float(np.mean([r if r is not None else steps for r in reached]))
        for level in levels:
            reached = [run["steps_to"][level_key(level)] for run in runs[kind].values()]
            report[f"{kind}_steps_to_{level_key(level)}"] = reached
            report[f"{kind}_mean_steps_to_{level_key(level)}"] = float(np.mean([r if r is not None else steps for r in reached]))
    (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out / "finetune.png")
    (out / "finetune.md").write_text(markdown_table(report))
    return report


def plot_report(report: dict, path: Path) -> None:
    from robot_sql.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, color in KINDS.items():
        for seed, run in report["runs"][kind].items():
            ax.plot(run["steps"], run["success"], color=color, alpha=0.8, label=LABELS[kind] if seed == report["seeds"][0] else None)
    for level in report["levels"]:
        ax.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="environment steps on the target task", ylabel="evaluation success rate",
           title=f"{report['target_env']}: fine-tuned from {report['pretrain_env']} vs from scratch", ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(report: dict) -> str:
    steps, levels = report["steps"], report["levels"]
    cell = lambda value: "-" if value is None else str(value)  # noqa: E731
    lines = [
        f"Steps on {report['target_env']} to reach evaluation success >= {' and >= '.join(f'{level:g}' for level in levels)} "
        f"({report['eval_every_episodes']} held-out episodes every {report['eval_every']} steps; '-' = not within {steps} steps, "
        f"counted as {steps} in the mean). Pretraining: {report['pretrain_steps']} steps of {report['pretrain_env']}. "
        f"Annealing: reward_scale to {report['anneal_reward_scale_to']:g} over the first {report['anneal_steps']} steps "
        f"(fine-tuned: from the pretrained {report['pretrain_reward_scale']:g}; scratch: from {report['scratch_sql']['reward_scale']:g}).",
        "",
        "| seed | " + " | ".join(f"{LABELS[kind]}, {level:g}" for kind in KINDS for level in levels) + " |",
        "|---|" + "---|" * (len(KINDS) * len(levels)),
    ]
    for seed in report["seeds"]:
        cells = [report["runs"][kind][seed]["steps_to"][level_key(level)] for kind in KINDS for level in levels]
        lines.append(f"| {seed} | " + " | ".join(cell(value) for value in cells) + " |")
    lines.append("| mean | " + " | ".join(f"{report[f'{kind}_mean_steps_to_{level_key(level)}']:.0f}"
                                       for kind in KINDS for level in levels) + " |")
    lines += ["", f"Success at the end ({steps} steps; last periodic evaluation / 50 held-out episodes after training):", "",
              "| seed | " + " | ".join(LABELS[kind] for kind in KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for seed in report["seeds"]:
        runs = [report["runs"][kind][seed] for kind in KINDS]
        lines.append(f"| {seed} | " + " | ".join(
            f"{run['success'][-1]:.2f} / {run['final_success_rate']:.2f}" if run["success"] and run["final_success_rate"] is not None else "-"
            for run in runs) + " |")
    if report["finetuned_sql_differs"]:
        lines += ["", "The fine-tuned agent keeps its checkpoint's SQL settings where they differ from the scratch runs': "
                  + ", ".join(f"{key} {value} (scratch: {report['scratch_sql'][key]})" for key, value in report["finetuned_sql_differs"].items()) + "."]
    return "\n".join(lines) + "\n"


@click.command("finetune-report")
@click.option("--pretrain-env", default=env_alias(PRETRAIN_ENV), show_default=True, help="Environment to pretrain on (name or gymnasium id).")
@click.option("--target-env", default=env_alias(TARGET_ENV), show_default=True, help="Environment to fine-tune on (name or gymnasium id).")
@click.option("--seeds", type=int, multiple=True, default=(0, 1, 2), show_default=True)
@click.option("--pretrain-steps", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Steps on the target task.")
@click.option("--eval-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Success level of the *_steps_to_threshold keys (0.8 and 0.95 are always reported).")
@click.option("--anneal-to", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Final reward_scale (1/alpha) of the fine-tuning run and of the annealed scratch run.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Runs in parallel, one CPU thread each.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def finetune_report_command(pretrain_env, target_env, seeds, pretrain_steps, steps, eval_every, threshold, anneal_to, jobs, out):
    """Fine-tuning vs training from scratch over several seeds; writes OUT/finetune.{json,md,png}.

    Runs finished in OUT with the same settings are read back (a report can be resumed)."""
    finetune_report(list(seeds), pretrain_steps, steps, eval_every, threshold, anneal_to, out,
                    pretrain_env=pretrain_env, target_env=target_env, jobs=jobs, echo=click.echo)
    click.echo((out / "finetune.md").read_text())
