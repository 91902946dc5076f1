"""The simulated Sawyer's joint control behaves like Intera's: limits, tracking, timeout, hold,
perturbations and bad input."""
import mujoco
import numpy as np
import pytest

from robot_sql import sawyer
from robot_sql.robot import Robot
from robot_sql.sim.sawyer import MujocoSawyer


@pytest.fixture
def robot():
    return MujocoSawyer()


def distance_moved(robot: MujocoSawyer, start: np.ndarray) -> float:
    return float(np.linalg.norm(robot.ee_pose()[0] - start))


def test_it_is_a_robot(robot):
    assert isinstance(robot, Robot)
    assert robot.joint_names == sawyer.JOINT_NAMES


def test_maximal_commands_for_10_s_stay_within_position_and_velocity_limits(robot):
    # Contacts off: this checks the controller; a crash into the pedestal is not its doing.
    robot.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    rng = np.random.default_rng(0)
    worst_velocity, closest_to_limit = 0.0, np.inf
    for step in range(200):  # 20 Hz for 10 s, bang-bang at twice the limits (clipped to them)
        if step % 10 == 0:
            command = rng.choice([-2.0, 2.0], size=7) * sawyer.VELOCITY_LIMITS
        robot.send_velocity(command)
        for _ in range(5):
            robot.advance(0.01)
            q = robot.joint_positions()
            worst_velocity = max(worst_velocity, np.max(np.abs(robot.joint_velocities()) / sawyer.VELOCITY_LIMITS))
            closest_to_limit = min(closest_to_limit, np.min(np.minimum(q - sawyer.POSITION_LOWER, sawyer.POSITION_UPPER - q)))
    assert robot.time == pytest.approx(10.0)
    assert closest_to_limit > 0.0
    assert worst_velocity <= 1.0
    assert worst_velocity > 0.9  # the commands really were maximal


def test_velocity_step_is_tracked_within_1_percent_after_0_2_s(robot):
    command = 0.3 * sawyer.VELOCITY_LIMITS * np.array([1, -1, 1, -1, 1, -1, 1])
    errors = []
    for _ in range(6):  # re-sent at 20 Hz, like the actor
        robot.send_velocity(command)
        robot.advance(0.05)
        errors.append(np.max(np.abs(robot.joint_velocities() - command) / sawyer.VELOCITY_LIMITS))
    # the acceleration limits (8-12 rad/s^2) make the first 0.05-0.12 s a ramp
    assert errors[0] > 0.05
    assert max(errors[3:]) < 0.01


def test_commands_beyond_the_limits_are_clipped(robot):
    for _ in range(20):  # right_j6 has 8 rad of room below neutral
        robot.send_velocity(-10 * sawyer.VELOCITY_LIMITS * np.array([0, 0, 0, 0, 0, 0, 1]))
        robot.advance(0.05)
    # the servo aims at 97% of the limit (VELOCITY_HEADROOM, sim/sawyer.py)
    assert robot.joint_velocities()[6] == pytest.approx(-0.97 * sawyer.VELOCITY_LIMITS[6], rel=0.01)
    robot.send_position(np.full(7, 100.0))
    robot.advance(0.5)
    assert np.all(robot.joint_positions() <= sawyer.POSITION_UPPER)


def test_after_the_command_timeout_the_arm_holds(robot):
    command = np.full(7, 0.4)
    robot.send_velocity(command)
    robot.advance(0.15)
    # still within Intera's 0.2 s: the command is still being followed
    assert np.allclose(robot.joint_velocities(), command, atol=0.01)
    robot.advance(0.25)  # timed out at 0.2 s; 0.2 s more to stop
    start = robot.ee_pose()[0]
    drift = 0.0
    for _ in range(10):
        robot.advance(0.1)
        drift = max(drift, distance_moved(robot, start))
    assert drift < 0.002
    assert np.max(np.abs(robot.joint_velocities())) < 1e-3


def test_a_wrench_on_right_l6_moves_the_hand_and_the_hold_brings_it_back(robot):
    start = robot.ee_pose()[0]
    robot.apply_wrench("right_l6", force=[0.0, 0.0, -30.0], torque=[0.0, 0.0, 0.0], duration=0.5)
    robot.advance(0.5)
    assert distance_moved(robot, start) > 0.005
    robot.advance(1.0)
    assert distance_moved(robot, start) < 0.0005
    assert not np.any(robot.data.xfrc_applied)  # the wrench ended on time


def test_displacement_moves_the_joints_and_the_arm_holds_there(robot):
    before = robot.joint_positions()
    delta = np.array([0.1, -0.05, 0.0, 0.05, 0.0, 0.0, 0.2])
    robot.displace(delta)
    robot.advance(1.0)
    np.testing.assert_allclose(robot.joint_positions(), before + delta, atol=1e-3)


def test_move_to_a_named_pose_gets_there_at_the_speed_ratio(robot):
    robot.reset("shipping")
    assert robot.move_to("neutral", timeout=10.0)
    np.testing.assert_allclose(robot.joint_positions(), sawyer.named_pose("neutral"), atol=0.01)
    # the largest move (right_j5, 3.36 rad) at 0.3 of 3.485 rad/s takes about 3.2 s
    assert robot.time > 3.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_commands_are_rejected_and_the_arm_holds(robot, bad):
    robot.send_velocity(np.full(7, 0.3))
    robot.advance(0.1)
    command = np.full(7, 0.3)
    command[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        robot.send_velocity(command)
    held = robot.joint_positions()
    robot.advance(0.1)  # within the 0.2 s timeout: stopping now is the hold, not the timeout
    assert np.max(np.abs(robot.joint_velocities())) < 0.1
    robot.advance(1.0)
    np.testing.assert_allclose(robot.joint_positions(), held, atol=1e-3)
    assert np.max(np.abs(robot.joint_velocities())) < 1e-3
    with pytest.raises(ValueError, match="NaN or inf"):
        robot.send_position(command)
    with pytest.raises(ValueError, match="7 values"):
        robot.send_velocity([0.1, 0.2])


def test_bad_perturbations_are_clear_errors(robot):
    with pytest.raises(ValueError, match="unknown link 'right_l9'"):
        robot.apply_wrench("right_l9", [1, 0, 0], [0, 0, 0], 0.1)
    with pytest.raises(ValueError, match="3 finite values"):
        robot.apply_wrench("right_l6", [1, 0, np.nan], [0, 0, 0], 0.1)
    with pytest.raises(ValueError, match="positive number of seconds"):
        robot.apply_wrench("right_l6", [1, 0, 0], [0, 0, 0], -1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        robot.displace([0, 0, 0, np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="unknown named pose"):
        robot.move_to("dance")
    with pytest.raises(ValueError, match="seconds must be"):
        robot.advance(float("nan"))
    assert not np.any(robot.data.xfrc_applied)
