"""The MuJoCo Sawyer model against the reference numbers (robot_sql/sawyer.py, reference/sawyer.md)."""
import mujoco
import numpy as np
import pytest

from robot_sql import sawyer
from robot_sql.sim.sawyer import MujocoSawyer
from robot_sql.sim.scenes import build_model
from robot_sql.tasks import lego
from robot_sql.tasks.poses import compose, inverse, quat_rotate


@pytest.fixture(scope="module")
def lego_model():
    return build_model("lego")


def test_forward_kinematics_at_neutral_matches_the_reference():
    robot = MujocoSawyer()
    robot.reset("neutral")
    position, quat = robot.ee_pose()
    assert np.linalg.norm(position - sawyer.NEUTRAL_RIGHT_HAND_POSITION) < 0.002
    tool_z = quat_rotate(quat, np.array([0.0, 0.0, 1.0]))
    assert tool_z @ np.array([0.0, 0.0, -1.0]) > np.cos(np.deg2rad(1.0))  # tool z points down
    # and the orientation is the reference quaternion (0.0003, 0.7071, 0.7071, 0.0003) up to sign
    assert abs(quat @ np.array([0.0003, 0.7071, 0.7071, 0.0003])) > 0.9999


def test_joint_limits_and_efforts_in_the_mjcf_are_the_reference_ones(lego_model):
    for i, name in enumerate(sawyer.JOINT_NAMES):
        joint = lego_model.joint(name)
        np.testing.assert_allclose(joint.range, [sawyer.POSITION_LOWER[i], sawyer.POSITION_UPPER[i]])
        np.testing.assert_allclose(lego_model.jnt_actfrcrange[joint.id], [-sawyer.EFFORT_LIMITS[i], sawyer.EFFORT_LIMITS[i]])
    arm_mass = sum(lego_model.body(name).mass[0] for name in (*sawyer.LINK_NAMES, "head", "right_arm_base_link"))
    assert arm_mass == pytest.approx(20.7345, abs=1e-3)  # URDF sum, base..l6 incl. head


def test_the_held_brick_sits_in_the_hand_where_the_task_expects_it(lego_model):
    data = mujoco.MjData(lego_model)
    data.qpos[:7] = sawyer.named_pose("neutral")
    mujoco.mj_forward(lego_model, data)
    hand_site = lego_model.site("right_hand").id
    hand_quat, brick_quat = np.empty(4), np.empty(4)
    mujoco.mju_mat2Quat(hand_quat, data.site_xmat[hand_site])
    brick = lego_model.body("held_brick").id
    mujoco.mju_mat2Quat(brick_quat, data.xmat[brick])
    expected_position, expected_quat = compose((data.site_xpos[hand_site], hand_quat), lego.HELD_BRICK_IN_HAND)
    np.testing.assert_allclose(data.xpos[brick], expected_position, atol=1e-9)
    assert abs(brick_quat @ expected_quat) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(lego_model.geom("held_brick").size, lego.BRICK_SIZE / 2)
    # inverse() undoes compose(): the target computation relies on it
    back = compose(compose((data.site_xpos[hand_site], hand_quat), lego.HELD_BRICK_IN_HAND), inverse(lego.HELD_BRICK_IN_HAND))
    np.testing.assert_allclose(back[0], data.site_xpos[hand_site], atol=1e-12)


def test_unknown_scene_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scene 'kitchen'"):
        build_model("kitchen")
