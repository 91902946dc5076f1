"""Perturbation trials on the real MuJoCo Sawyer with a scripted policy: the numbers are measurements."""
import gymnasium
import numpy as np
import pytest

import robot_sql  # noqa: F401  (registers the envs)
from robot_sql.panel.app import list_reports
from robot_sql import sawyer
from robot_sql.perturbation import (JOINT_LIMIT_MARGIN_RAD, MAX_DISPLACEMENT_RAD, PerturbationAborted,
                                   PerturbationSpec, push, run_trials, save_report,
                                   unfinished_report)
from robot_sql.rundir import RunDir
from robot_sql.sim.scripted import DLSController


@pytest.fixture(scope="module")
def env():
    env = gymnasium.make("SawyerReach-v0")
    yield env
    env.close()


def reaching_policy(env):
    """The sim's scripted resolved-rate controller, as a policy: observation -> action."""
    controller = DLSController(env.unwrapped.robot)
    return lambda observation: controller.action(env.unwrapped.target, env.unwrapped.velocity_fraction)


def still_policy(observation):
    return np.zeros(7)


def test_a_harder_push_deviates_the_hand_further(env):
    policy = reaching_policy(env)
    gentle = run_trials(env, policy, PerturbationSpec(kind="wrench", magnitude=1.0, duration_s=0.5, trials=3))
    hard = run_trials(env, policy, PerturbationSpec(kind="wrench", magnitude=60.0, duration_s=0.5, trials=3))
    for soft_trial, hard_trial in zip(gentle["trials"], hard["trials"]):
        assert soft_trial["seed"] == hard_trial["seed"]
        assert hard_trial["max_deviation_m"] > 10 * soft_trial["max_deviation_m"] > 0
        assert soft_trial["max_deviation_m"] < 0.003  # a 1 N nudge barely moves a servoed arm
        assert hard_trial["max_deviation_m"] > 0.005
    assert gentle["summary"]["success_rate"] == hard["summary"]["success_rate"] == 1.0


def test_a_bigger_displacement_takes_longer_to_recover(env):
    policy = reaching_policy(env)
    small = run_trials(env, policy, PerturbationSpec(kind="displacement", magnitude=0.1, trials=3))
    large = run_trials(env, policy, PerturbationSpec(kind="displacement", magnitude=0.4, trials=3))
    for small_trial, large_trial in zip(small["trials"], large["trials"]):
        assert large_trial["max_deviation_m"] > 2 * small_trial["max_deviation_m"] > 0.01
        assert large_trial["recovered"] and large_trial["time_to_recover_s"] > small_trial["time_to_recover_s"]
        assert large_trial["success"] and large_trial["reference_success"]
    assert large["summary"]["mean_recovery_s"] > small["summary"]["mean_recovery_s"] > 0


def test_a_policy_that_does_not_correct_never_recovers(env):
    report = run_trials(env, still_policy, PerturbationSpec(kind="displacement", magnitude=0.3, trials=2))
    for trial in report["trials"]:
        assert not trial["recovered"] and trial["time_to_recover_s"] is None
        assert not trial["success"] and trial["steps"] == env.unwrapped.max_steps
        assert trial["max_deviation_m"] > 0.03


def test_reports_are_saved_and_listed(env, tmp_path):
    run = RunDir.create(tmp_path)
    report = run_trials(env, reaching_policy(env), {"kind": "wrench", "magnitude": 20.0, "trials": 1, "seed": 7})
    path = save_report(run, report)
    listed = list_reports(run)
    assert listed[0]["name"] == path.name and listed[0]["spec"]["seed"] == 7
    assert listed[0]["summary"]["trials"] == 1 and listed[0]["summary"]["max_deviation_m"] > 0
    assert listed[0]["outcome"] == "completed"


def test_an_unfinished_test_is_kept_as_a_report_that_says_so(tmp_path):
    run = RunDir.create(tmp_path)
    spec = PerturbationSpec(kind="wrench", magnitude=5.0, trials=20)
    save_report(run, unfinished_report(spec, "aborted", "PerturbationAborted: aborted 1.20 s into an episode"))
    listed = list_reports(run)
    assert len(listed) == 1 and listed[0]["outcome"] == "aborted" and listed[0]["spec"]["trials"] == 20
    assert listed[0]["reason"].startswith("PerturbationAborted") and listed[0]["summary"] == {}


def test_an_abort_holds_the_arm_and_ends_the_test(env):
    calls = []

    def abort_on_third_check():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(PerturbationAborted):
        run_trials(env, still_policy, PerturbationSpec(kind="wrench", magnitude=5.0), abort=abort_on_third_check)
    assert env.unwrapped.robot._mode == "hold"


def test_a_push_after_the_episode_is_refused(env):
    with pytest.raises(ValueError, match="before the push"):
        run_trials(env, reaching_policy(env), PerturbationSpec(kind="wrench", magnitude=5.0, push_at_s=30.0, trials=1))


def test_a_displacement_never_leaves_the_joint_limits(env):
    robot = env.unwrapped.robot
    near_limits = sawyer.POSITION_UPPER - 0.06
    robot.reset(near_limits)
    spec = PerturbationSpec(kind="displacement", magnitude=MAX_DISPLACEMENT_RAD)
    for seed in range(20):
        push(robot, spec, np.random.default_rng(seed))
        reached = robot.joint_positions()
        assert np.all(reached <= sawyer.POSITION_UPPER - JOINT_LIMIT_MARGIN_RAD + 1e-9)
        assert np.all(reached >= sawyer.POSITION_LOWER + JOINT_LIMIT_MARGIN_RAD - 1e-9)


def test_perturb_command_writes_a_report_and_refuses_a_push_beyond_the_limit(tmp_path):
    """`robot-sql perturb` on a (here untrained) SQL checkpoint: a JSON report with every trial; a
    push over the limit is one line and status 2, before any episode runs."""
    import json

    from click.testing import CliRunner

    from robot_sql.cli import main
    from robot_sql.sql import SoftQLearning, SQLConfig
    from robot_sql.tasks.pose_task import ACTION_SIZE, OBSERVATION_SIZE

    SoftQLearning(SQLConfig(obs_dim=OBSERVATION_SIZE, act_dim=ACTION_SIZE, hidden_sizes=(16, 16))).save(tmp_path / "agent.pt")
    common = [str(tmp_path / "agent.pt"), "--env", "sawyer-reach", "--kind", "wrench", "--push-at", "0.2", "--trials", "2"]
    result = CliRunner().invoke(main, ["perturb", *common, "--magnitude", "20", "--out", str(tmp_path / "push.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "push.json").read_text())
    assert report["env"] == "SawyerReach-v0" and len(report["trials"]) == 2
    assert report["summary"]["max_deviation_m"] > 0  # 20 N on the wrist moves the hand
    refused = CliRunner().invoke(main, ["perturb", *common, "--magnitude", "1000", "--out", str(tmp_path / "no.json")])
    assert refused.exit_code == 2 and "exceeds the limit" in refused.output and not (tmp_path / "no.json").exists()


def test_traces_are_bounded_and_keep_the_push_and_the_largest_deviation(env):
    from robot_sql.perturbation import MAX_TRACE_LENGTH, MAX_TRACE_POINTS, trace_steps

    assert trace_steps(5, [2, 9]) == [0, 1, 2, 3, 4]
    many = trace_steps(100_000, [12_345, 99_999, 7])
    assert len(many) <= MAX_TRACE_POINTS + 3 and {0, 7, 12_345, 99_999} <= set(many) and many == sorted(many)
    report = run_trials(env, reaching_policy(env), PerturbationSpec(kind="displacement", magnitude=0.3, trials=1))
    trial = report["trials"][0]
    trace = trial["trace"]
    assert len(trace["time_s"]) <= MAX_TRACE_LENGTH
    assert max(trace["deviation_m"]) == pytest.approx(trial["max_deviation_m"], abs=1e-5)  # the peak is never dropped
    pushed_at = trace["time_s"].index(next(t for t in trace["time_s"] if t > trial["push_time_s"]))
    assert all(d == 0 for d in trace["deviation_m"][:pushed_at - 1])  # the same seed: no deviation before the push
    assert trace["error_m"][-1] < trace["tolerance_m"] and trace["reference_error_m"][-1] < trace["tolerance_m"]
