"""The safety filter (robot_sql/safety.py): pure checks, no ROS needed."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_sql import sawyer
from robot_sql.safety import SafetyFilter, SafetyLimits

NEUTRAL = np.asarray(sawyer.NAMED_POSES["neutral"])
EE = np.asarray(sawyer.NEUTRAL_RIGHT_HAND_POSITION)
LIMITS = SafetyLimits.sawyer(0.5, workspace_low=[0.2, -0.4, 0.0], workspace_high=[0.8, 0.4, 0.6])
FILTER = SafetyFilter(LIMITS)


def check(command, q=NEUTRAL, ee=EE, age=0.0, **kwargs):
    return FILTER.check(np.asarray(command, dtype=float), q, ee, age, **kwargs)


def test_small_command_passes_unchanged():
    command = np.full(7, 0.1)
    decision = check(command)
    assert decision.reason == "ok"
    np.testing.assert_array_equal(decision.velocity, command)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_command_or_state_holds(bad):
    command = np.full(7, 0.1)
    command[3] = bad
    assert check(command).hold
    q = NEUTRAL.copy()
    q[0] = bad
    assert check(np.zeros(7), q=q).hold
    assert check(np.zeros(7), ee=np.array([0.5, bad, 0.2])).hold


def test_estop_and_stale_state_hold():
    assert check(np.zeros(7), estopped=True).reason == "estop"
    assert check(np.zeros(7), age=float("nan")).hold
    assert not check(np.zeros(7), age=LIMITS.stale_after * 0.9).hold
    assert check(np.zeros(7), age=LIMITS.stale_after * 1.1).reason == "stale joint state"


def test_wrong_shapes_hold():
    assert check(np.zeros(6)).hold
    assert check(np.zeros(7), q=np.zeros(8)).hold
    assert check(np.zeros(7), jacobian=np.zeros((6, 7))).hold


def test_velocity_limit_scales_whole_command_keeping_direction():
    command = np.zeros(7)
    command[0], command[1] = 10.0, 1.0
    velocity = check(command).velocity
    assert velocity[0] == pytest.approx(LIMITS.velocity_max[0])
    assert velocity[1] / velocity[0] == pytest.approx(0.1)


def test_slowdown_to_zero_at_joint_limit_and_moving_away_allowed():
    q = NEUTRAL.copy()
    speeds = []
    for distance in (0.3, 0.1, 0.05, 0.0, -0.01):
        q[2] = LIMITS.position_upper[2] - distance
        command = np.zeros(7)
        command[2] = 1.0
        speeds.append(check(command, q=q).velocity[2])
        command[2] = -1.0
        assert check(command, q=q).velocity[2] == pytest.approx(-min(1.0, LIMITS.velocity_max[2]))
    assert speeds[0] == pytest.approx(min(1.0, LIMITS.velocity_max[2]))
    assert speeds[1] > speeds[2] > 0
    assert speeds[3] == 0.0 and speeds[4] == 0.0


def test_workspace_without_jacobian_holds_outside_box():
    assert check(np.zeros(7), ee=np.array([0.5, 0.0, 0.7])).reason == "end effector outside the workspace"


def test_workspace_with_jacobian_blocks_outward_and_allows_inward_motion():
    jacobian = np.zeros((3, 7))
    jacobian[2, 1] = 1.0  # joint 1 moves the end effector up in z at 1 m/rad
    command = np.zeros(7)
    command[1] = 1.0
    near_top = np.array([0.5, 0.0, LIMITS.workspace_high[2] - 0.01])
    velocity = check(command, ee=near_top, jacobian=jacobian).velocity
    # 0.1 s ahead the end effector must still be inside: 0.01 m of room at 0.1 s -> 0.1 m/s
    assert velocity[1] == pytest.approx(0.01 / LIMITS.lookahead)
    above = np.array([0.5, 0.0, LIMITS.workspace_high[2] + 0.05])
    assert check(command, ee=above, jacobian=jacobian).velocity[1] == 0.0
    assert check(-command, ee=above, jacobian=jacobian).velocity[1] < 0.0


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="empty workspace"):
        SafetyLimits.sawyer(0.5, workspace_low=[0, 0, 0], workspace_high=[1, -1, 1])
    with pytest.raises(ValueError, match="speed_fraction"):
        SafetyLimits.sawyer(1.5, workspace_low=[0, 0, 0], workspace_high=[1, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        SafetyLimits.sawyer(0.5, workspace_low=[0, np.nan, 0], workspace_high=[1, 1, 1])


finite = st.floats(-20, 20, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    command=st.lists(finite, min_size=7, max_size=7),
    offsets=st.lists(st.floats(0, 1), min_size=7, max_size=7),
    ee=st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    jacobian=st.lists(st.floats(-1, 1), min_size=21, max_size=21),
)
def test_output_always_within_limits(command, offsets, ee, jacobian):
    q = LIMITS.position_lower + np.asarray(offsets) * (LIMITS.position_upper - LIMITS.position_lower)
    ee = np.asarray(ee)
    jacobian = np.asarray(jacobian).reshape(3, 7)
    decision = check(command, q=q, ee=ee, jacobian=jacobian)
    velocity = decision.velocity
    assert np.all(np.abs(velocity) <= LIMITS.velocity_max + 1e-12)
    assert np.all(velocity[q >= LIMITS.position_upper] <= 0) and np.all(velocity[q <= LIMITS.position_lower] >= 0)
    # no axis of the end effector moves further out of the box
    ee_velocity = jacobian @ velocity
    assert np.all(ee_velocity[ee >= LIMITS.workspace_high] <= 1e-12)
    assert np.all(ee_velocity[ee <= LIMITS.workspace_low] >= -1e-12)


def test_a_vanishing_end_effector_step_does_not_overflow():
    # hand 1 mm inside the box's x wall, moving out by a subnormal amount: the scale must come
    # from comparing room and step, not from room / step (which overflows to inf)
    jacobian = np.zeros((3, 7))
    jacobian[0, 0] = 1e-310
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decision = check(np.full(7, 0.1), ee=np.array([0.799, 0.0, 0.3]), jacobian=jacobian)
    assert decision.reason == "ok"


def guarded_sim_robot():
    from robot_sql.kinematics import SawyerKinematics
    from robot_sql.safety import GuardedRobot
    from robot_sql.sim.sawyer import MujocoSawyer

    return GuardedRobot(MujocoSawyer(), FILTER, SawyerKinematics())


def test_guarded_robot_moves_within_limits_and_estop_latches():
    robot = guarded_sim_robot()
    start = robot.joint_positions()
    decision = robot.send_velocity(np.full(7, 5.0))  # far above the limits
    assert decision.reason == "limited"
    robot.advance(0.1)
    moved = robot.joint_positions() - start
    assert np.all(np.abs(moved) <= LIMITS.velocity_max * 0.1 + 1e-3) and np.linalg.norm(moved) > 0.01
    robot.estop()
    stopped_at = robot.joint_positions()
    assert robot.send_velocity(np.full(7, 0.2)).reason == "estop"
    robot.advance(0.3)
    np.testing.assert_allclose(robot.joint_positions(), stopped_at, atol=0.02)
    assert robot.move_to("neutral") is False
    robot.rearm()
    assert robot.move_to("neutral", timeout=10.0)


def test_guarded_robot_holds_once_when_commanding_stops():
    robot = guarded_sim_robot()
    holds = []
    inner_hold = robot.robot.hold
    robot.robot.hold = lambda: (holds.append(1), inner_hold())
    for _ in range(3):
        assert robot.send_velocity(np.full(7, np.nan)).hold
    assert len(holds) == 1
    robot.send_velocity(np.zeros(7))
    robot.send_velocity(np.full(7, np.inf))
    assert len(holds) == 2
