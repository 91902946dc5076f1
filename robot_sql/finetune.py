"""Fine-tuning from a max-entropy pretrained policy (paper, section 5): `robot-sql finetune-report`.

For each seed: pretrain on PointRun-v0 (move fast in any direction), then train PointSingleGoal-v0
three times, evaluating every `eval_every` steps: from the pretrained agent with reward_scale
annealed log-linearly upward (alpha annealed down, as in the paper); from scratch; and from
scratch with the same annealing (which separates the effect of pretraining from annealing).
Reports the environment steps each needs to reach the success threshold, with a plot.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from robot_sql.config import load_settings
from robot_sql.train import TrainSettings, train

PRETRAIN_ENV, TARGET_ENV = "PointRun-v0", "PointSingleGoal-v0"
KINDS = {"finetuned": "tab:blue", "scratch": "tab:orange", "scratch_annealed": "tab:green"}


def eval_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "eval_success_rate" in row]
    return [row["step"] for row in rows], [row["eval_success_rate"] for row in rows]


def steps_to_threshold(steps: list[int], success: list[float], threshold: float) -> int | None:
    return next((step for step, rate in zip(steps, success) if rate >= threshold), None)


def finetune_report(seeds: list[int], pretrain_steps: int, steps: int, eval_every: int, threshold: float,
                    anneal_to: float, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common = dict(steps=steps, eval_every=eval_every, eval_every_episodes=20, eval_episodes=50, log_every=eval_every)
    runs = {kind: {} for kind in KINDS}
    for seed in seeds:
        pretrained = out / f"pretrain-seed{seed}"
        train(PRETRAIN_ENV, load_settings(TrainSettings, seed=seed, steps=pretrain_steps, eval_episodes=20), pretrained, progress=False)
        annealed = load_settings(TrainSettings, seed=seed, anneal_reward_scale_to=anneal_to, anneal_steps=steps // 2, **common)
        train(TARGET_ENV, annealed, out / f"finetuned-seed{seed}", init=pretrained / "agent.pt", progress=False)
        train(TARGET_ENV, load_settings(TrainSettings, seed=seed, **common), out / f"scratch-seed{seed}", progress=False)
        train(TARGET_ENV, annealed, out / f"scratch_annealed-seed{seed}", progress=False)
        for kind in runs:
            curve_steps, success = eval_curve(out / f"{kind}-seed{seed}")
            runs[kind][seed] = {"steps": curve_steps, "success": success,
                                "steps_to_threshold": steps_to_threshold(curve_steps, success, threshold)}
    report = {
        "pretrain_env": PRETRAIN_ENV, "target_env": TARGET_ENV, "seeds": seeds, "pretrain_steps": pretrain_steps,
        "steps": steps, "eval_every": eval_every, "threshold": threshold, "anneal_reward_scale_to": anneal_to,
        "runs": runs,
    }
    for kind in runs:
        reached = [run["steps_to_threshold"] for run in runs[kind].values()]
        report[f"{kind}_steps_to_threshold"] = reached
        report[f"{kind}_mean_steps_to_threshold"] = float(np.mean([r if r is not None else steps for r in reached]))
    (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out / "finetune.png")
    (out / "finetune.md").write_text(markdown_table(report))
    return report


def plot_report(report: dict, path: Path) -> None:
    from robot_sql.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, color in KINDS.items():
        for seed, run in report["runs"][kind].items():
            ax.plot(run["steps"], run["success"], color=color, alpha=0.8, label=f"{kind}" if seed == report["seeds"][0] else None)
    ax.axhline(report["threshold"], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="environment steps on the target task", ylabel="evaluation success rate",
           title=f"{report['target_env']}: fine-tuned from {report['pretrain_env']} vs from scratch", ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(report: dict) -> str:
    lines = [
        f"Steps on {report['target_env']} to reach evaluation success >= {report['threshold']} "
        f"(20 episodes every {report['eval_every']} steps; '-' = not within {report['steps']} steps). "
        f"Pretraining: {report['pretrain_steps']} steps of {report['pretrain_env']}.",
        "",
        "| seed | fine-tuned (annealed) | from scratch | from scratch, annealed |",
        "|---|---|---|---|",
    ]
    for seed in report["seeds"]:
        cells = [report["runs"][kind][seed]["steps_to_threshold"] for kind in KINDS]
        lines.append(f"| {seed} | " + " | ".join("-" if cell is None else str(cell) for cell in cells) + " |")
    lines.append("| mean | " + " | ".join(f"{report[f'{kind}_mean_steps_to_threshold']:.0f}" for kind in KINDS) + " |")
    return "\n".join(lines) + "\n"


@click.command("finetune-report")
@click.option("--seeds", type=int, multiple=True, default=(0, 1, 2), show_default=True)
@click.option("--pretrain-steps", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Steps on the target task.")
@click.option("--eval-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.8, show_default=True)
@click.option("--anneal-to", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Final reward_scale (1/alpha) of the fine-tuning run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def finetune_report_command(seeds, pretrain_steps, steps, eval_every, threshold, anneal_to, out):
    """Fine-tuning vs training from scratch over several seeds; writes OUT/finetune.{json,md,png}."""
    report = finetune_report(list(seeds), pretrain_steps, steps, eval_every, threshold, anneal_to, out)
    click.echo((out / "finetune.md").read_text())
