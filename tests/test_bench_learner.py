"""`robot-sql bench learner` at a toy size: the report's fields, and FLOPs that agree three ways."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from robot_sql.bench.learner import counted_flops, filled_replay, update_matmul_flops
from robot_sql.cli import main
from robot_sql.sql import SoftQLearning, SQLConfig
from tests.conftest import require


def test_bench_learner_tiny_run_writes_a_consistent_report(tmp_path):
    out = tmp_path / "learner.json"
    result = CliRunner().invoke(main, ["bench", "learner", "--tiny", "--out", str(out), "--rounds", "2",
                                       "--seconds", "0.05", "--square", "128", "--threads", "1", "--twin-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["device"] in ("cpu", "cuda")
    assert report["torch_threads"] == 1
    [case] = report["cases"].values()
    # The count from the layer shapes equals FlopCounterMode's count of one real update and of
    # the recorded matmuls that make the ceiling.
    assert case["update_flops"] == case["update_flops_analytic"]
    assert case["flops_match"] is True
    assert case["twin_q"] is True and case["matmuls_per_update"] > 0
    for name in ("sql_updates_per_s", "square_matmul_gflops_per_s", "ceiling_updates_per_s", "ceiling_gflops_per_s", "fraction_of_ceiling",
                 "fraction_of_square_matmul"):
        assert case[name] > 0, name
    assert len(case["rounds"]["sql_updates_per_s"]) == 2
    # the fraction is the median of the per-round ratios of the two rates timed back to back
    rounds = case["rounds"]
    ratios = sorted(sql / ceiling for sql, ceiling in zip(rounds["sql_updates_per_s"], rounds["ceiling_updates_per_s"]))
    assert rounds["fraction_of_ceiling"] == pytest.approx([sql / ceiling for sql, ceiling in
                                                           zip(rounds["sql_updates_per_s"], rounds["ceiling_updates_per_s"])])
    assert case["fraction_of_ceiling"] == pytest.approx(sum(ratios) / 2)
    assert case["fraction_of_ceiling_range"] == pytest.approx([ratios[0], ratios[-1]])
    require(importlib.util.find_spec("stable_baselines3") is not None, "the `bench` extra (stable-baselines3) is not installed")
    assert case["sac_updates_per_s"] > 0 and case["sac_update_flops"] > 0
    assert case["sql_over_sac_updates"] > 0


def test_python_m_robot_sql_runs_the_bench_as_scripts_gpu_bench_does(tmp_path):
    """`python -m robot_sql` (no installed entry point: how scripts/gpu_bench.sh runs it on a GPU machine)."""
    out = tmp_path / "learner.json"
    done = subprocess.run([sys.executable, "-m", "robot_sql", "bench", "learner", "--tiny", "--rounds", "1", "--seconds", "0.05",
                           "--square", "64", "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(json.loads(out.read_text())["cases"]) == ["tiny-b8-8x8"]
    script = Path(__file__).parents[1] / "scripts" / "gpu_bench.sh"
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.parametrize("sizes", [
    dict(obs_dim=23, act_dim=7, hidden_sizes=(128, 128), batch_size=128),
    dict(obs_dim=2, act_dim=2, hidden_sizes=(64, 32, 16), batch_size=20, kernel_particles=10, value_particles=5,
         kernel_update_ratio=0.3, twin_q=True),
])
def test_flop_formula_matches_flop_counter_on_one_update(sizes):
    config = SQLConfig(**sizes)
    agent = SoftQLearning(config, device="cpu")
    rng = np.random.default_rng(0)
    batch = filled_replay(config.obs_dim, config.act_dim, 100, rng).sample(config.batch_size, rng)
    assert counted_flops(lambda: agent.update(batch)) == update_matmul_flops(config)
