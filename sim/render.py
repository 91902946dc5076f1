"""`robot-sql render`: a PNG of an env's first frame and a GIF (or MP4) of a short episode.

Headless: MuJoCo renders through EGL (MUJOCO_GL=egl, set here unless already chosen).
Episodes are driven by the scripted DLS controller (sim/scripted.py) or by random actions.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path  # noqa: E402

import click  # noqa: E402
import gymnasium  # noqa: E402
import imageio.v2 as imageio  # noqa: E402
import numpy as np  # noqa: E402

import robot_sql  # noqa: E402,F401  (registers the envs)
from robot_sql.sim.scripted import ScriptedPolicy  # noqa: E402

SAWYER_ENVS = ("SawyerReach-v0", "SawyerLegoStack-v0", "SawyerPretrain-v0")
APPROACH_HEIGHT = {"SawyerLegoStack-v0": 0.03}  # lower the brick onto the studs from above


def render_episode(env_id: str, seconds: float, seed: int, policy: str,
                   size: tuple[int, int]) -> tuple[list[np.ndarray], dict, float]:
    """Frames of one episode (the first is the reset state), its last info dict and the frame rate."""
    env = gymnasium.make(env_id, render_mode="rgb_array", render_size=size)
    try:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        scripted = ScriptedPolicy(env.unwrapped, APPROACH_HEIGHT.get(env_id, 0.0))
        scripted.reset()
        frames, info = [env.render()], {}
        for _ in range(int(round(seconds * env.unwrapped.control_hz))):
            action = scripted() if policy == "scripted" else env.action_space.sample()
            _, _, terminated, truncated, info = env.step(action)
            frames.append(env.render())
            if terminated or truncated:
                break
        return frames, info, env.unwrapped.control_hz
    finally:
        env.close()


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
        return
    try:
        imageio.mimsave(path, frames, fps=fps)
    except (ImportError, ValueError, RuntimeError) as error:
        raise click.ClickException(f"cannot write {path.suffix} video ({error}); use a .gif path or install imageio-ffmpeg") from error


@click.command("render")
@click.option("--env", "env_id", type=click.Choice(SAWYER_ENVS), default="SawyerLegoStack-v0", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("media"), show_default=True,
              help="Directory for the files (a run's media/ folder, for example).")
@click.option("--video-format", type=click.Choice(["gif", "mp4"]), default="gif", show_default=True,
              help="mp4 needs the imageio-ffmpeg package.")
@click.option("--seconds", type=click.FloatRange(min=0.05, max=60.0), default=4.0, show_default=True, help="Episode length to record.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--policy", type=click.Choice(["scripted", "random"]), default="scripted", show_default=True,
              help="scripted: damped least-squares IK to the target; random: uniform actions.")
@click.option("--width", type=click.IntRange(64, 1280), default=640, show_default=True)
@click.option("--height", type=click.IntRange(64, 960), default=480, show_default=True)
def render_command(env_id: str, out_dir: Path, video_format: str, seconds: float, seed: int, policy: str,
                   width: int, height: int) -> None:
    """Render a Sawyer env headless: a PNG of the first frame and a GIF/MP4 of an episode."""
    frames, info, fps = render_episode(env_id, seconds, seed, policy, (height, width))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{env_id.removesuffix('-v0').lower()}_seed{seed}"
    png, video = out_dir / f"{stem}.png", out_dir / f"{stem}.{video_format}"
    imageio.imwrite(png, frames[0])
    write_video(video, frames, fps)
    click.echo(f"wrote {png} and {video} ({len(frames)} frames; success: {bool(info.get('is_success'))})")
