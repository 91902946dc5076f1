"""Reward and success of the pose tasks, and the Lego seating check with a scripted controller."""
import gymnasium
import numpy as np
import pytest

import robot_sql  # noqa: F401  (registers the envs)
from robot_sql.sim.scripted import ScriptedPolicy
from robot_sql.tasks.pose_task import PoseTask, SuccessTimer
from robot_sql.tasks.poses import compose, inverse, quat_from_axis_angle, quat_multiply, rotation_vector

TARGET = (np.array([0.6, 0.1, 0.15]), np.array([0.0, np.sqrt(0.5), np.sqrt(0.5), 0.0]))


def shifted(pose, offset=(0.0, 0.0, 0.0), yaw_deg=0.0):
    return pose[0] + np.asarray(offset), quat_multiply(quat_from_axis_angle([0, 0, 1], np.deg2rad(yaw_deg)), pose[1])


def test_rotation_vector_and_inverse():
    quat = quat_from_axis_angle([1, 2, 3], 0.7)
    np.testing.assert_allclose(rotation_vector(quat), 0.7 * np.array([1, 2, 3]) / np.linalg.norm([1, 2, 3]))
    np.testing.assert_allclose(rotation_vector(-quat), rotation_vector(quat))  # q and -q: one rotation
    pose = (np.array([0.1, -0.2, 0.3]), quat)
    identity = compose(pose, inverse(pose))
    np.testing.assert_allclose(identity[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(identity[1]), [1, 0, 0, 0], atol=1e-12)


def test_reward_is_zero_on_target_and_falls_with_position_and_orientation_error():
    task = PoseTask()
    assert task.reward(TARGET, TARGET) == pytest.approx(0.0)
    rewards = [task.reward(shifted(TARGET, (d, 0, 0)), TARGET) for d in (0.001, 0.005, 0.02, 0.1, 0.3)]
    assert all(r < 0 for r in rewards) and rewards == sorted(rewards, reverse=True)
    assert task.reward(shifted(TARGET, yaw_deg=20), TARGET) < task.reward(shifted(TARGET, yaw_deg=5), TARGET) < 0
    # the documented formula: d = 0.1 m -> -1 - (1 - exp(-100))
    assert task.reward(shifted(TARGET, (0, 0.1, 0)), TARGET) == pytest.approx(-2.0)


def test_success_needs_the_pose_within_tolerance_for_the_hold_time():
    task = PoseTask()
    assert task.within_tolerance(shifted(TARGET, (0.002, 0, 0), yaw_deg=2), TARGET)
    assert not task.within_tolerance(shifted(TARGET, (0.01, 0, 0)), TARGET)
    assert not task.within_tolerance(shifted(TARGET, yaw_deg=15), TARGET)
    timer = SuccessTimer(hold_time=0.25)
    assert [timer.update(True, 0.05) for _ in range(5)] == [False, False, False, False, True]
    timer.reset()
    assert not any(timer.update(inside, 0.05) for inside in [True] * 4 + [False] + [True] * 4)


def stack(env, policy, seed, offset=(0.0, 0.0, 0.0), yaw_deg=0.0):
    """Run the scripted controller at the seating pose shifted by offset / yaw; the final step's result."""
    env.reset(seed=seed)
    policy.reset(shifted(env.target, offset, yaw_deg))
    for _ in range(env.max_steps):
        _, _, terminated, truncated, info = env.step(policy())
        if terminated or truncated:
            return terminated, info


@pytest.fixture(scope="module")
def lego_env():
    env = gymnasium.make("SawyerLegoStack-v0", episode_seconds=6.0).unwrapped
    yield env
    env.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_scripted_ik_controller_seats_the_brick_and_the_task_reports_success(lego_env, seed):
    policy = ScriptedPolicy(lego_env, approach_height=0.03)
    terminated, info = stack(lego_env, policy, seed)
    assert terminated and info["is_success"]
    assert info["position_error"] < 0.003 and info["orientation_error"] < np.deg2rad(3)
    # the held brick really rests on the fixed one: its underside is one brick height above the fixed brick's
    held = lego_env.robot.data.body("held_brick").xpos
    np.testing.assert_allclose(held - lego_env.fixed_brick[0], [0, 0, 0.0096], atol=0.003)


@pytest.mark.parametrize("offset, yaw_deg", [((0.01, 0.0, 0.0), 0.0), ((0.0, -0.01, 0.0), 0.0), ((0.0, 0.0, 0.0), 15.0)])
def test_misaligned_by_1_cm_or_15_degrees_is_no_success(lego_env, offset, yaw_deg):
    policy = ScriptedPolicy(lego_env, approach_height=0.03)
    terminated, info = stack(lego_env, policy, seed=0, offset=offset, yaw_deg=yaw_deg)
    assert not terminated and not info["is_success"]
    # the controller did get where it aimed, so the failure is the misalignment
    assert info["position_error"] == pytest.approx(np.linalg.norm(offset), abs=0.002)
    assert info["orientation_error"] == pytest.approx(np.deg2rad(yaw_deg), abs=0.01)
