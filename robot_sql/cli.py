"""The `robot-sql` command line.

Sub-commands are imported only when they run, so `robot-sql --help` is instant and a
command never pays for torch, MuJoCo or rclpy unless it uses them. Each command lives
beside the code it drives; this table is the one place that names them.
"""
from __future__ import annotations

import importlib

import click

from robot_sql.malloc import keep_freed_memory

# name -> ("module:attribute" of a click command or group, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "actor-node": ("robot_sql.ros_actor:actor_node_command", "Actor on a Sawyer over ROS 2 (real arm via ros1_bridge, or sim-robot)."),
    "preflight": ("robot_sql.preflight:preflight_command", "Check a Sawyer (or sim-robot) before any motion: rates, names, limits, e-stop."),
    "sim-robot": ("robot_sql.sim.ros_driver:sim_robot_command", "MuJoCo Sawyer behind the real arm's ROS 2 topics (Intera)."),
    "learner": ("robot_sql.learner:learner_command", "Learner service: durable replay, SQL updates, weight publishing, control channel."),
    "actor": ("robot_sql.actor:actor_command", "Actor service: runs the policy on an env at the control rate, streams transitions."),
    "control": ("robot_sql.protocol:control_command", "Send one control request to the learner or an actor (status, pause, estop, ...)."),
    "keygen": ("robot_sql.protocol:keygen_command", "Write a CURVE key pair for encrypted, authenticated service links."),
    "train": ("robot_sql.train:train_command", "Train SQL on an environment in one process (2-D tasks, Sawyer envs)."),
    "eval": ("robot_sql.train:eval_command", "Evaluate an agent checkpoint; writes eval.json."),
    "finetune-report": ("robot_sql.finetune:finetune_report_command", "Fine-tuning from a pretrained max-entropy policy vs from scratch (report + plot)."),
    "perturb": ("robot_sql.perturbation:perturb_command", "Perturbation test of a checkpoint on the simulated arm (pushes, joint displacements)."),
    "compose": ("robot_sql.compose:compose_command", "Compose trained agents by summing their Q-functions (no new env steps)."),
    "panel": ("robot_sql.panel.app:panel_command", "Web panel of a run: live curves, controls, e-stop, perturbation tests."),
    "render": ("robot_sql.sim.render:render_command", "Render a Sawyer env headless: PNG of a frame, GIF/MP4 of an episode."),
    "dry-run": ("robot_sql.dry_run:dry_run_command", "Whole service on simulated Sawyers on loopback: learner, actors, panel."),
    "bench": ("robot_sql.bench:bench_group", "Speed benchmarks (robot-sql bench NAME), results as JSON."),
}


class LazyGroup(click.Group):
    """A click group whose commands are resolved from "module:attribute" on first use."""

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module_name, attribute = self.lazy_commands[name][0].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy_commands[name][1]) for name in sorted(self.lazy_commands)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """robot-sql: soft Q-learning for a Rethink Sawyer, in simulation and on the real arm."""
    keep_freed_memory()  # before any torch work: see robot_sql/malloc.py
