"""The Sawyer gymnasium envs: registration, the env checker, determinism, and rendering."""
import json

import gymnasium
import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium.utils.env_checker import check_env
from PIL import Image

import robot_sql  # noqa: F401  (registers the envs)
from robot_sql import sawyer
from robot_sql.cli import main
from robot_sql.envs import ENVIRONMENTS
from tests.sim_support import EpisodeEnds

SAWYER_ENVS = ["SawyerReach-v0", "SawyerLegoStack-v0", "SawyerPretrain-v0"]  # what `robot-sql bench sim` times
OBSTACLE_ENVS = ["SawyerStack-v0", "SawyerAvoid-v0", "SawyerStackAvoid-v0"]


@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is")  # unbounded on purpose
@pytest.mark.parametrize("env_id", SAWYER_ENVS + OBSTACLE_ENVS)
def test_env_passes_gymnasiums_checker(env_id):
    assert env_id in ENVIRONMENTS
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", SAWYER_ENVS + OBSTACLE_ENVS)
def test_same_seed_same_episode(env_id):
    def rollout():
        env = gymnasium.make(env_id)
        observation, _ = env.reset(seed=3)
        env.action_space.seed(3)
        observations = [observation]
        for _ in range(10):
            observations.append(env.step(env.action_space.sample())[0])
        return np.array(observations)

    first, second = rollout(), rollout()
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == (11, 23)


def test_actions_are_scaled_velocity_commands_and_episodes_end_on_time():
    env = gymnasium.make("SawyerReach-v0", control_hz=10.0, velocity_fraction=0.5, episode_seconds=1.0).unwrapped
    env.reset(seed=0)
    action = np.array([0, 0, 0, 0, 0, 0, -1.0], dtype=np.float32)  # right_j6 has room below neutral
    results = [env.step(action) for _ in range(10)]
    # observation[7:14] is the joint velocity over its limit: right_j6 at half its limit
    assert results[-1][0][13] == pytest.approx(-0.5, abs=0.01)
    assert env.robot.time == pytest.approx(1.0)
    assert [r[3] for r in results] == [False] * 9 + [True]
    with pytest.raises(ValueError, match="control_hz"):
        gymnasium.make("SawyerReach-v0", control_hz=4.0)
    with pytest.raises(ValueError, match="episode_seconds"):
        gymnasium.make("SawyerReach-v0", episode_seconds=-1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.full(7, np.nan, dtype=np.float32))
    env.robot.advance(0.1)  # within the 0.2 s timeout, so stopping is the hold's doing
    assert abs(env.robot.joint_velocities()[6]) < 0.1 * 0.5 * sawyer.VELOCITY_LIMITS[6]  # from 2.27 rad/s


def test_pretraining_rewards_end_effector_speed():
    env = gymnasium.make("SawyerPretrain-v0").unwrapped
    env.reset(seed=0)
    still = env.step(np.zeros(7, dtype=np.float32))[1]
    fast = [env.step(np.array([1, 0, 0, 0, 0, 0, 0], dtype=np.float32))[1] for _ in range(10)][-1]
    # right_j0 at 0.3 * 1.74 rad/s swings the hand (about 0.48 m from the axis) at about 0.25 m/s
    assert still < 0.01
    assert fast == pytest.approx(0.3 * sawyer.VELOCITY_LIMITS[0] * 0.48, rel=0.2)
    # standing still there is nothing to succeed at either: it runs to the time limit
    env.robot.reset(env.robot.joint_positions())
    outcomes = [env.step(np.zeros(7, dtype=np.float32))[2:4] for _ in range(env.max_steps - 11)]
    assert outcomes[-1] == (False, True) and not any(terminated for terminated, _ in outcomes)


def test_render_command_writes_a_png_and_a_gif(tmp_path):
    result = CliRunner().invoke(main, ["render", "--env", "SawyerReach-v0", "--out", str(tmp_path), "--seconds", "0.5",
                                       "--width", "96", "--height", "64"])
    assert result.exit_code == 0, result.output
    png, gif = tmp_path / "sawyerreach_seed0.png", tmp_path / "sawyerreach_seed0.gif"
    with Image.open(png) as image:
        assert image.size == (96, 64)
        assert len(image.convert("RGB").getcolors(maxcolors=96 * 64)) > 10  # a picture, not a blank frame
    with Image.open(gif) as animation:
        assert animation.n_frames == 11  # reset frame + 0.5 s at 20 Hz
    bad = CliRunner().invoke(main, ["render", "--env", "Nope-v0"])
    assert bad.exit_code == 2 and "Nope-v0" in bad.output


def test_bench_sim_reports_steps_per_second_and_real_time_factor(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "sim", "--steps", "200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["env"] for r in report["results"]] == SAWYER_ENVS
    for r in report["results"]:
        assert r["real_time_factor"] == pytest.approx(r["steps_per_s"] / 20.0)
        assert r["real_time_factor"] > 10.0  # measured 60-100x on a loaded 2-core machine; target 20x
        assert 0.0 < r["mujoco_ms_per_step"] < r["total_ms_per_step"]


def drive(env_id: str, waypoints: list, seed: int = 0) -> tuple[list, list]:
    """Drive an obstacle env with the DLS controller through `waypoints` (hand positions; None = the
    target pose) to the episode's end, from the combined task's start near neutral (where the
    straight line to the brick meets the post); returns the rewards and infos of every step."""
    from robot_sql.sim.scripted import ScriptedPolicy

    env = gymnasium.make(env_id).unwrapped
    env.START_BOX = None  # the constituents start anywhere around the post: compare the envs from one start
    env.reset(seed=seed)
    policy = ScriptedPolicy(env)
    rewards, infos, done = [], [], False
    for waypoint in waypoints:
        policy.reset(None if waypoint is None else (np.array(waypoint), env.target[1]))
        for _ in range(60 if waypoint is not None else env.max_steps):
            _, reward, terminated, truncated, info = env.step(policy())
            rewards.append(reward)
            infos.append(info)
            done = terminated or truncated
            if done:
                return rewards, infos
    return rewards, infos


# straight at the brick, the held brick runs into the post; over it (up to 35 cm first) or around
# it (12 cm to its side first) it does not
STRAIGHT, OVER, AROUND = [None], [(0.5, 0.14, 0.35), (0.78, 0.14, 0.35), None], [(0.60, 0.26, 0.26), None]
INTO_THE_POST = [(0.60, 0.14, 0.2)]  # the held brick's underside 11 cm below the hand: inside the post


def test_the_post_is_counted_as_a_collision_and_charged_only_where_the_task_says():
    straight_rewards, straight = drive("SawyerStack-v0", STRAIGHT)
    assert straight[-1]["collision_steps"] > 0 and straight[-1]["is_success"]  # stacked, through the post
    assert sum(info["collision"] for info in straight) == straight[-1]["collision_steps"]
    for detour in (OVER, AROUND):
        detour_rewards, infos = drive("SawyerStack-v0", detour)
        assert infos[-1]["collision_steps"] == 0 and infos[-1]["is_success"]
        # the combined task charges nothing near the goal: a policy is never paid to stop short of it
        combined_rewards, _ = drive("SawyerStackAvoid-v0", detour)
        np.testing.assert_allclose(combined_rewards[-20:], detour_rewards[-20:])

    # the straight drive: the combined task charges 5 per step touching the post, less within 5 cm of it,
    # nothing farther; the avoid task charges only that
    combined_rewards, combined = drive("SawyerStackAvoid-v0", STRAIGHT)
    charged = np.array(combined_rewards) - np.array(straight_rewards)
    touching = np.array([info["collision"] for info in straight])
    np.testing.assert_allclose(charged[touching], -5.0)
    assert np.all(charged[~touching] > -5.0) and np.all(charged <= 0.0) and np.any(charged[~touching] < 0.0)
    avoid_rewards, avoid = drive("SawyerAvoid-v0", INTO_THE_POST)
    assert not any(info["is_success"] for info in avoid)
    assert all(-5.0 <= reward <= 0.0 for reward in avoid_rewards) and min(avoid_rewards) == -5.0


def test_evaluation_reports_the_share_of_episodes_that_touched_the_post(monkeypatch):
    from robot_sql.sim.scripted import DLSController
    from robot_sql.train import evaluate

    class StraightAtTheBrick:  # a policy object as evaluate takes one: act(observation) -> action
        def __init__(self):
            self.env = gymnasium.make("SawyerStackAvoid-v0").unwrapped  # started near neutral

        def act(self, observation):
            return DLSController(self.env.robot).action(self.env.target, self.env.velocity_fraction)

    policy = StraightAtTheBrick()
    monkeypatch.setattr(gymnasium, "make", lambda env_id, **kwargs: policy.env)  # evaluate's env: the one it steers
    result = evaluate(policy, "SawyerStackAvoid-v0", episodes=3, seed=0)
    assert result["collision_rate"] == 1.0 and result["mean_collision_steps"] > 0 and result["success_rate"] == 1.0


def test_training_logs_how_many_episodes_touched_the_post(tmp_path, monkeypatch):
    from robot_sql.config import load_settings
    from robot_sql.train import TrainSettings, train

    env = EpisodeEnds(gymnasium.make("SawyerAvoid-v0"))  # 3 s episodes from anywhere around the post: some touch it
    monkeypatch.setattr(gymnasium, "make", lambda env_id, **kwargs: env)  # train's env: the one recorded here
    settings = load_settings(TrainSettings, seed=0, steps=1800, min_pool_size=10 ** 6, log_every=600, eval_episodes=0)
    train("SawyerAvoid-v0", settings, tmp_path, progress=False)  # the untrained sampler: no update before 10**6 steps
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    touched = [info["collision_steps"] > 0 for info in env.final_infos]
    assert len(touched) == 30 and 0 < sum(touched) < 30, touched  # both kinds: the counts below are not all or none
    assert [row["collision_episodes"] for row in rows] == [sum(touched[:10]), sum(touched[:20]), sum(touched)]
    assert rows[-1]["collision_rate"] == pytest.approx(np.mean(touched[-20:]))
