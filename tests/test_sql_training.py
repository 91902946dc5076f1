"""Learning effects on the 2-D tasks, on CI budgets with fixed seeds."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from robot_sql.cli import main
from robot_sql.compose import compose
from robot_sql.config import load_settings
from robot_sql.sql import load_policy
from robot_sql.train import TrainSettings, evaluate, train


def test_multigoal_reaches_all_four_goals(tmp_path):
    settings = load_settings(TrainSettings, seed=1, steps=10000)
    result = train("MultiGoal-v0", settings, tmp_path, progress=False)

    assert result["success_rate"] >= 0.9, result
    assert result["episodes"] == 100
    assert min(result["goal_counts"]) >= 10, result["goal_counts"]  # multimodal: every goal, not one
    for name in ("agent.pt", "replay.npz", "metrics.jsonl", "eval.json", "multigoal.png", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10000 and rows[-1]["updates"] > 9000

    # `robot-sql eval` on the checkpoint writes the same eval.json fields
    out = tmp_path / "eval"
    run = CliRunner().invoke(main, ["eval", str(tmp_path / "agent.pt"), "--env", "multigoal", "--episodes", "20", "--out", str(out)])
    assert run.exit_code == 0, run.output
    evaluated = json.loads((out / "eval.json").read_text())
    assert set(evaluated) >= {"episodes", "success_rate", "mean_return", "goal_counts"}
    assert evaluated["episodes"] == 20 and evaluated["success_rate"] >= 0.7


def test_composed_policy_solves_the_intersection_task(tmp_path):
    """Q(line x=4) + Q(line y=4), frozen, yields a policy for the corner (4, 4) it never trained on."""
    for name, env_id, seed in (("x", "PointLineX-v0", 1), ("y", "PointLineY-v0", 2)):
        result = train(env_id, load_settings(TrainSettings, seed=seed, steps=3000, eval_episodes=50), tmp_path / name, progress=False)
        assert result["success_rate"] >= 0.9, (env_id, result)

    composed = compose([tmp_path / "x" / "agent.pt", tmp_path / "y" / "agent.pt"], "PointCorner-v0", tmp_path / "xy",
                       mean=False, updates=1500, seed=0, episodes=100, progress=False)
    assert composed["success_rate"] >= 0.8, composed

    # neither constituent alone solves the corner
    for name in ("x", "y"):
        alone = evaluate(load_policy(tmp_path / name / "agent.pt"), "PointCorner-v0", episodes=50, seed=0)
        assert alone["success_rate"] <= 0.3, (name, alone)


def test_bad_inputs_get_clear_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["eval", str(tmp_path / "nope.pt"), "--env", "multigoal", "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "checkpoint not found" in missing.output
    unknown_env = runner.invoke(main, ["train", "no-such-env", "--out", str(tmp_path)])
    assert unknown_env.exit_code == 2 and "unknown environment" in unknown_env.output
    (tmp_path / "bad.yaml").write_text("sql: {kernel_particles: 2}\n")
    nonsense = runner.invoke(main, ["train", "multigoal", "--steps", "10", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "bad.yaml")])
    assert nonsense.exit_code == 2 and "kernel_particles" in nonsense.output
    (tmp_path / "typo.yaml").write_text("stepz: 10\n")
    typo = runner.invoke(main, ["train", "multigoal", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "typo.yaml")])
    assert typo.exit_code == 2 and "stepz" in typo.output
    train("MultiGoal-v0", load_settings(TrainSettings, steps=50, min_pool_size=20, eval_episodes=0), tmp_path / "a", progress=False)
    (tmp_path / "bad_init.yaml").write_text("sql: {discount: 2.0}\n")
    bad_init = runner.invoke(main, ["train", "multigoal", "--steps", "10", "--out", str(tmp_path / "b"), "--init",
                                    str(tmp_path / "a" / "agent.pt"), "--config", str(tmp_path / "bad_init.yaml")])
    assert bad_init.exit_code == 2 and "discount" in bad_init.output


def test_fine_tuning_anneals_reward_scale_from_a_pretrained_policy(tmp_path):
    pretrain = train("PointRun-v0", load_settings(TrainSettings, seed=0, steps=300, min_pool_size=100, eval_episodes=5), tmp_path / "pre", progress=False)
    assert np.isfinite(pretrain["mean_return"])
    settings = load_settings(TrainSettings, seed=0, steps=400, min_pool_size=100, eval_episodes=5,
                             anneal_reward_scale_to=10.0, anneal_steps=200)
    train("PointSingleGoal-v0", settings, tmp_path / "fine", init=tmp_path / "pre" / "agent.pt", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "fine" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reward_scale"] == pytest.approx(10.0)
    assert rows[-1]["updates"] > 300  # the pretrained agent's counter carried on
