"""The real arm's env scores exactly as the simulator's: the actor node's `RobotPoseEnv`, fed over
real DDS by the MuJoCo driver (`robot-sql sim-robot`, on a private domain), and the MuJoCo envs
(SawyerReach-v0, SawyerLegoStack-v0) set to the same joint state and target give the same
observation (layout and scaling), reward, pose errors, tolerance and success. A policy trained in
simulation reads its inputs, and is judged, the same way on the arm only if this holds.

Checked at three held configurations (the driver's start pose, where a move under the policy's
actions stopped, and the episode start after `RobotPoseEnv.reset`), each with a reach target, a
seated Lego pose (robot_sql.tasks.lego) and two targets a few mm from the hand (one within only
the reach task's tolerance), and while moving (joint velocities are ~0 when held, so their
scaling is checked on a moving arm). Tests run in file order on one system."""
from __future__ import annotations

import math
import time

import gymnasium
import mujoco
import numpy as np
import pytest

from robot_sql import sawyer
from robot_sql.ros_actor import ActorNodeSettings, pose_task
from robot_sql.ports import free_port_block
from robot_sql.ros_env import SIM_PROFILE, ChildProcesses, private_domain
from robot_sql.service_settings import ActorSettings
from robot_sql.sim.scenes import table_height
from robot_sql.tasks import lego
from robot_sql.tasks.poses import compose, quat_from_axis_angle, quat_multiply
from tests.panel_support import run_token
from tests.ros_support import Probe, require_ros

ENV_IDS = ("SawyerReach-v0", "SawyerLegoStack-v0")
NEUTRAL = sawyer.named_pose("neutral")
# the driver's start pose: every joint off neutral by a different amount, so a permutation shows
START = NEUTRAL + np.array([-0.25, 0.1, 0.15, -0.2, 0.25, 0.1, -0.3])
ACTION = np.array([0.4, -0.3, 0.5, -0.4, 0.6, -0.5, 0.7])  # from START: the hand stays inside the box
VELOCITY_FRACTION = 0.3  # the envs' default action scale (ActorNodeSettings.velocity_fraction too)
NEUTRAL_HAND_QUAT = np.array([0.0, math.sqrt(0.5), math.sqrt(0.5), 0.0])
REACH_TARGET = (np.array([0.6, 0.05, 0.2]), quat_multiply(quat_from_axis_angle([0, 0, 1], 0.3), NEUTRAL_HAND_QUAT))
BRICK = (0.62, 0.12, math.pi / 2 + 0.2)  # the fixed brick: x, y (m), yaw (rad)
STILL = 1e-6  # rad/s: "held" (the servo settles far below this within about a second)
ATOL = 1e-5  # observation: float32 rounding; a layout or scaling error is orders of magnitude more
SUCCESS_STEPS = 6  # hold_time 0.25 s at 20 Hz is 5 steps


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    require_ros()
    from robot_sql.ros_actor import ActorNode

    domain = private_domain()
    scratch = tmp_path_factory.mktemp("task_parity")
    processes = ChildProcesses(scratch, domain)
    run_token(scratch / "run")  # the nodes' control channels need a token file
    probe, nodes = None, []
    try:
        start_pose = "[" + ", ".join(repr(float(v)) for v in START) + "]"
        processes.start("driver", "sim-robot", "--params-file", str(SIM_PROFILE), "--ros-args",
                        "-p", "scene:=arm", "-p", f"start_pose:={start_pose}")
        probe = Probe(domain)
        port = free_port_block(2 + len(ENV_IDS))  # a learner address nobody serves, and the control channels
        for index, env_id in enumerate(ENV_IDS):
            settings = ActorNodeSettings(
                actor=ActorSettings(env=env_id, control_rate_hz=20.0, paced=False, learner=f"127.0.0.1:{port}",
                                    control_bind=f"tcp://127.0.0.1:{port + 2 + index}",
                                    control_token_file=scratch / "run" / "control.token"),
                velocity_fraction=VELOCITY_FRACTION, start_pose=NEUTRAL.tolist())
            nodes.append(ActorNode(probe.node, settings))  # the node's RosSawyer, GuardedRobot and RobotPoseEnv
        for node in nodes:
            assert node.ros_robot.wait_for_state(30), "no joint and endpoint states from the driver"
        sims = {}
        for env_id in ENV_IDS:
            sims[env_id] = gymnasium.make(env_id).unwrapped
            sims[env_id].reset(seed=0)
        yield processes, probe, {env_id: node.env for env_id, node in zip(ENV_IDS, nodes)}, sims
    finally:
        for node in nodes:
            node.actor.link.context.destroy(linger=0)
        if probe is not None:
            probe.close()
        processes.close()


# ---- the two sides ------------------------------------------------------------------------
def ros_snapshot(env, timeout: float = 5.0):
    """(q, dq, hand, observation) of the ROS env, all from one set of stored states: retried
    until no message arrived while the observation was being computed."""
    robot = env.robot
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q, dq, hand = robot.joint_positions(), robot.joint_velocities(), robot.ee_pose()
        obs = env._observation()
        again = robot.joint_positions(), robot.joint_velocities(), robot.ee_pose()
        if np.array_equal(q, again[0]) and np.array_equal(dq, again[1]) and \
                all(np.array_equal(a, b) for a, b in zip(hand, again[2])):
            return q, dq, hand, obs
    raise AssertionError("the robot's state never stayed put for one observation")


def mirror(sim, q, dq, target=None) -> None:
    """The MuJoCo env at joint state (q, dq), with `target` (None: leave the env's target)."""
    sim.robot.reset(q)
    sim.robot.data.qvel[:7] = dq
    mujoco.mj_forward(sim.robot.model, sim.robot.data)
    sim._hand = sim.robot.ee_pose()
    if target is not None:
        sim.target = (np.array(target[0], dtype=np.float64), np.array(target[1], dtype=np.float64))


def wait_until_held(envs, timeout: float = 20.0) -> None:
    robot = envs[ENV_IDS[0]].robot
    deadline = time.monotonic() + timeout
    while np.max(np.abs(robot.joint_velocities())) >= STILL:
        if time.monotonic() > deadline:
            raise AssertionError(f"the arm did not come to rest: |dq| = {np.abs(robot.joint_velocities()).max()}")
        time.sleep(0.05)


def set_target(probe, envs, target, timeout: float = 10.0) -> None:
    """Publish `target` until every node's RosSawyer has accepted it (the topic is volatile)."""
    position, quat = target
    deadline = time.monotonic() + timeout

    def accepted(env) -> bool:
        current = env.robot.target()
        return current is not None and np.allclose(current[0], position, atol=1e-12) and \
            np.allclose(current[1], quat, atol=1e-9)

    while not all(accepted(env) for env in envs.values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"target {target} was not accepted: {[env.robot.rejected for env in envs.values()]}")
        probe.publish_target(position, quat)
        time.sleep(0.05)


def assert_same(ros, sim, what: str, atol: float = ATOL) -> None:
    np.testing.assert_allclose(ros, sim, rtol=0, atol=atol, err_msg=what)


def check_held_configuration(system, label: str) -> None:
    """At the arm's current (held) configuration, for each target and task: observation,
    reward, errors, tolerance and success agree between the ROS env and the MuJoCo env."""
    processes, probe, envs, sims = system
    wait_until_held(envs)
    hand = envs[ENV_IDS[0]].robot.ee_pose()
    brick = lego.fixed_brick_pose(*BRICK, table_height(sims["SawyerLegoStack-v0"].robot.model))
    seated = lego.seated_hand_pose(brick)
    # a few mm from the hand: 5 mm and 2 degrees is within the reach task's tolerance only
    near = compose(hand, (np.array([0.003, -0.004, 0.0]), quat_from_axis_angle([1, 1, 0], np.deg2rad(2.0))))
    nearer = compose(hand, (np.array([0.0006, 0.0008, 0.0]), quat_from_axis_angle([0, 1, 1], np.deg2rad(1.0))))
    targets = [("reach", REACH_TARGET, 1), ("lego seated", seated, 1), ("5 mm, 2 deg", near, SUCCESS_STEPS),
               ("1 mm, 1 deg", nearer, SUCCESS_STEPS)]
    within = {env_id: [] for env_id in ENV_IDS}
    for name, target, steps in targets:
        set_target(probe, envs, target)
        for env_id in ENV_IDS:
            env, sim = envs[env_id], sims[env_id]
            what = f"{label}, {env_id}, target {name}"
            q, dq, ros_hand, ros_obs = ros_snapshot(env)
            if name == "lego seated" and env_id == "SawyerLegoStack-v0":
                mirror(sim, q, dq)
                sim.set_fixed_brick(brick)  # the Lego env's own way to its target
                assert_same(sim.target[0], target[0], what, 1e-12)
            else:
                mirror(sim, q, dq, target)
            sim_obs = sim._observation()
            assert ros_obs.dtype == sim_obs.dtype == np.float32 and ros_obs.shape == sim_obs.shape == (23,)
            assert_same(ros_obs, sim_obs, f"observation: {what}")
            assert_same(ros_hand[0], sim._hand[0], f"hand position: {what}", 1e-6)
            task = pose_task(env_id)
            ros_target = env.target
            assert task == env.task == type(sim).task, what
            assert task.errors(ros_hand, ros_target) == pytest.approx(task.errors(sim._hand, sim.target), abs=1e-7), what
            assert task.reward(ros_hand, ros_target) == pytest.approx(sim.task.reward(sim._hand, sim.target), abs=1e-6), what
            assert task.within_tolerance(ros_hand, ros_target) == sim._within_tolerance(sim._hand), what
            within[env_id].append(sim._within_tolerance(sim._hand))
            # the envs' own steps: hold still (zero action) `steps` times; success after the hold time
            for step in range(steps):
                ros_obs, ros_reward, ros_done, _, ros_info = env.step(np.zeros(7, dtype=np.float32))
                sim_obs, sim_reward, sim_done, _, sim_info = sim.step(np.zeros(7, dtype=np.float32))
                assert_same(ros_obs, sim_obs, f"step {step} observation: {what}")
                assert ros_reward == pytest.approx(sim_reward, abs=1e-6), f"step {step} reward: {what}"
                for key in ("position_error", "orientation_error"):
                    assert ros_info[key] == pytest.approx(sim_info[key], abs=1e-7), f"step {step} {key}: {what}"
                assert ros_done == sim_done == ros_info["is_success"] == sim_info["is_success"], f"step {step}: {what}"
            if steps == SUCCESS_STEPS:
                assert ros_done == within[env_id][-1], f"success after the hold time: {what}"
    # the targets tell the tasks apart (far: neither; 5 mm, 2 deg: reach only; 1 mm, 1 deg: both)
    assert within == {"SawyerReach-v0": [False, False, True, True], "SawyerLegoStack-v0": [False, False, False, True]}


# ---- the tests, in order on one system ----------------------------------------------------
def test_the_node_scores_with_the_simulators_tasks(system):
    processes, probe, envs, sims = system
    assert pose_task("SawyerReach-v0") == envs["SawyerReach-v0"].task == sims["SawyerReach-v0"].task
    assert pose_task("SawyerLegoStack-v0") == envs["SawyerLegoStack-v0"].task == sims["SawyerLegoStack-v0"].task
    assert sims["SawyerReach-v0"].task != sims["SawyerLegoStack-v0"].task  # else a swap would go unseen
    for env_id in ENV_IDS:
        assert envs[env_id].observation_space == sims[env_id].observation_space
        assert envs[env_id].action_space == sims[env_id].action_space
        assert envs[env_id].velocity_fraction == sims[env_id].velocity_fraction == VELOCITY_FRACTION
        assert envs[env_id].control_hz == sims[env_id].control_hz


def test_held_at_the_drivers_start_pose(system):
    processes, probe, envs, sims = system
    q = ros_snapshot(envs[ENV_IDS[0]])[0]
    assert_same(q, START, "the driver holds its start pose", 1e-3)
    check_held_configuration(system, "start pose")


def test_moving_joint_velocities(system):
    """Under the policy's actions: joint angles and velocities (the part of the observation that
    is not ~0 only while moving) agree, and read as the action times the action scale."""
    processes, probe, envs, sims = system
    set_target(probe, envs, REACH_TARGET)
    tracked = 0
    for step in range(15):
        envs["SawyerReach-v0"].step(ACTION.astype(np.float32))
        for env_id in ENV_IDS:
            q, dq, _, ros_obs = ros_snapshot(envs[env_id])
            mirror(sims[env_id], q, dq, REACH_TARGET)
            assert_same(ros_obs[:14], sims[env_id]._observation()[:14], f"moving, step {step}, {env_id}")
        # the velocity command has been tracked (in the simulator it is, from the 2nd step on)
        if np.max(np.abs(ros_obs[7:14] - VELOCITY_FRACTION * ACTION)) < 0.02:
            tracked += 1
        if tracked >= 2 and step >= 4:
            break
    assert tracked >= 2, f"the arm never moved at the commanded velocity: {ros_obs[7:14]} vs {VELOCITY_FRACTION * ACTION}"


def test_held_where_the_move_stopped(system):
    processes, probe, envs, sims = system
    q = ros_snapshot(envs[ENV_IDS[0]])[0]
    assert np.max(np.abs(q - START)) > 0.05, "the arm did not move"
    check_held_configuration(system, "after the move")


def test_held_at_an_episode_start(system):
    processes, probe, envs, sims = system
    obs, _ = envs["SawyerReach-v0"].reset()  # position move to the node's start pose (neutral)
    assert_same(obs[:7], NEUTRAL, "reset reaches the start pose", 0.01)
    check_held_configuration(system, "episode start")
