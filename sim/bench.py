"""`robot-sql bench sim`: env steps per second and the real-time factor of the Sawyer envs.

One process on one core (MuJoCo steps single-threaded), uniform random actions, resets
included. The real-time factor is simulated seconds per wall-clock second at the env's
control rate; the target is at least 20x. `mujoco_ms_per_step` times the same number of
physics steps alone (arm holding), to separate physics from the Python around it.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import gymnasium
import mujoco
import numpy as np

import robot_sql  # noqa: F401  (registers the envs)

SAWYER_ENVS = ("SawyerReach-v0", "SawyerLegoStack-v0", "SawyerPretrain-v0")
REAL_TIME_TARGET = 20.0


def measure(env_id: str, steps: int, seed: int) -> dict:
    env = gymnasium.make(env_id).unwrapped
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1.0, 1.0, (steps, 7)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    wall = time.perf_counter() - start
    # the physics alone, arm holding: as many physics steps as those env steps took
    env.robot.hold()
    model, data = env.robot.model, env.robot.data
    physics_steps_per_env_step = int(round(1.0 / env.control_hz / model.opt.timestep))
    start = time.perf_counter()
    mujoco.mj_step(model, data, nstep=steps * physics_steps_per_env_step)
    physics = time.perf_counter() - start
    env.close()
    return {"env": env_id, "steps": steps, "control_hz": env.control_hz, "wall_s": wall,
            "steps_per_s": steps / wall, "real_time_factor": steps / env.control_hz / wall,
            "mujoco_ms_per_step": physics / steps * 1e3, "total_ms_per_step": wall / steps * 1e3}


@click.command("sim")
@click.option("--steps", type=click.IntRange(min=100), default=4000, show_default=True, help="Env steps per env.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-sim.json"), show_default=True)
def bench_sim_command(steps: int, seed: int, out: Path) -> None:
    """Env steps/s and real-time factor of the Sawyer envs on one core."""
    results = [measure(env_id, steps, seed) for env_id in SAWYER_ENVS]
    report = {"benchmark": "sim", "mujoco": mujoco.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "results": results,
              "target_real_time_factor": REAL_TIME_TARGET,
              "meets_target": all(r["real_time_factor"] >= REAL_TIME_TARGET for r in results)}
    out.write_text(json.dumps(report, indent=2))
    for r in results:
        click.echo(f"{r['env']}: {r['steps_per_s']:.0f} steps/s, {r['real_time_factor']:.0f}x real time at "
                   f"{r['control_hz']:g} Hz; MuJoCo {r['mujoco_ms_per_step']:.3f} ms of {r['total_ms_per_step']:.3f} ms per step")
    click.echo(f"wrote {out}")
