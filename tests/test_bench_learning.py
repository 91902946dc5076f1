"""`robot-sql bench learning` end to end at toy size: both algorithms trained in their own
processes, evaluated on the held-out episodes at each interval, summarised into JSON, table and
plot; a rerun with the same settings reads the finished runs back instead of training again."""
import json

from click.testing import CliRunner

from robot_sql.cli import main


def test_bench_learning_writes_both_algorithms_and_resumes(tmp_path):
    args = ["bench", "learning", "--env", "multigoal", "--seeds", "1", "--steps", "300", "--eval-every", "150",
            "--eval-episodes", "2", "--algos", "sql,sac", "--out", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    result = json.loads((tmp_path / "learning.json").read_text())
    assert [(row["algo"], row["step"]) for row in result["summary"]] == [("sac", 150), ("sac", 300), ("sql", 150), ("sql", 300)]
    assert all(0.0 <= row["success_median"] <= 1.0 for row in result["summary"])
    assert result["held_out_seeds"] == [1_000_000, 1_000_001]
    assert (tmp_path / "learning.png").stat().st_size > 0 and "| SQL | 300 |" in (tmp_path / "learning.md").read_text()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.output.count("read back") == 2, again.output
    changed = CliRunner().invoke(main, [*args[:-2], "--eval-episodes", "3", "--algos", "sql", "--out", str(tmp_path)])
    assert changed.exit_code == 0 and "read back" not in changed.output  # other settings: trained anew


def test_bench_learning_refuses_an_unknown_algorithm(tmp_path):
    result = CliRunner().invoke(main, ["bench", "learning", "--env", "multigoal", "--steps", "10", "--algos", "sql,ppo",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--algos" in result.output
