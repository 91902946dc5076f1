"""Learning effects on the 2-D tasks, on CI budgets with fixed seeds."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from robot_sql.cli import main
from robot_sql.compose import compose
from robot_sql.config import load_settings
from robot_sql.finetune import finetune_report
from robot_sql.sql import load_policy
from robot_sql.train import TrainSettings, evaluate, train

# minutes each on a quiet machine, several times that at a load of 8: the timeout is only for hangs
pytestmark = pytest.mark.timeout(1800)


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
    """Q(line x=4) + Q(line y=4), frozen, yields a policy for the corner (4, 4) it never trained on: two
    seeds of each constituent, all four pairs composed. Thresholds from docs/sql.md (composition: 0.85-0.99
    over the eight pairs measured; a constituent alone: at most 0.23 of 100 corner episodes)."""
    agents, alone = {"x": [], "y": []}, {}
    for name, env_id, seeds in (("x", "PointLineX-v0", (10, 11)), ("y", "PointLineY-v0", (20, 21))):
        for seed in seeds:
            out = tmp_path / f"{name}{seed}"
            result = train(env_id, load_settings(TrainSettings, seed=seed, steps=3000, eval_episodes=50), out, progress=False)
            assert result["success_rate"] >= 0.9, (env_id, seed, result)
            agents[name].append(out / "agent.pt")
            alone[name, seed] = evaluate(load_policy(out / "agent.pt"), "PointCorner-v0", episodes=100, seed=0)["success_rate"]
    assert max(alone.values()) <= 0.3, alone  # neither constituent alone solves the corner

    composed = {}
    for i, x in enumerate(agents["x"]):
        for j, y in enumerate(agents["y"]):
            result = compose([x, y], "PointCorner-v0", tmp_path / f"xy{i}{j}", mean=False, updates=3000, seed=2 * i + j,
                             episodes=100, progress=False)
            composed[x.parent.name, y.parent.name] = result["success_rate"]
    assert min(composed.values()) >= 0.75, composed


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


def test_pretraining_speeds_up_fine_tuning(tmp_path):
    """A max-entropy policy pretrained on "move fast in any direction" reaches 0.8 success on the single
    goal in fewer steps than training from scratch, with or without the same reward-scale annealing
    (same seeds, held-out evaluation episodes). Seeds 0-4 measured in docs/sql.md."""
    report = finetune_report([0, 1, 2], pretrain_steps=1000, steps=1000, eval_every=100, threshold=0.8, anneal_to=10.0, out=tmp_path)
    never = report["steps"] + report["eval_every"]  # not reached within the budget
    finetuned, scratch, annealed = ([never if steps is None else steps for steps in report[f"{kind}_steps_to_threshold"]]
                                    for kind in ("finetuned", "scratch", "scratch_annealed"))
    assert max(finetuned) <= 800, report["finetuned_steps_to_threshold"]
    assert all(f < s for f, s in zip(finetuned, scratch)), (finetuned, scratch)
    assert all(f <= a for f, a in zip(finetuned, annealed)), (finetuned, annealed)
    # against the same annealing from scratch: what pretraining itself brings
    assert np.mean(finetuned) <= np.mean(annealed) - 100, (finetuned, annealed)
    # both of the success levels are reported, besides the threshold's
    assert report["levels"] == [0.8, 0.95] and report["finetuned_steps_to_0.8"] == report["finetuned_steps_to_threshold"]
