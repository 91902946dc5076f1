"""gymnasium environments on the MuJoCo Sawyer.

- `SawyerReach-v0`: move right_hand to a random target pose in a workspace box in front of the robot.
- `SawyerReachNear-v0`: the same with targets in a 10 cm cube and no yaw (a CI-sized budget).
- `SawyerLegoStack-v0`: a 2x4 brick is held in the gripper; seat it on a second brick fixed
  on the table at a random place and yaw. The target is the hand pose that seats the brick
  (robot_sql/tasks/lego.py).
- `SawyerPretrain-v0`: move the end effector fast in any direction (the SQL paper's
  pretraining task); reward = end-effector speed (m/s).
- The obstacle tasks (composition, ICRA 2018): a post stands between the start pose and a brick
  at one fixed place (sim/scenes.py OBSTACLE). `SawyerStack-v0`: seat the brick, the post is
  ignored; `SawyerAvoid-v0`: stay clear of the post (reward = -COLLISION_COST per step touching
  it, falling linearly to 0 at COST_MARGIN from it; nothing else); both constituents start
  anywhere around the post. `SawyerStackAvoid-v0`: both, the sum of the two rewards (the task
  whose Q a sum of the two constituents' Q bounds), started near neutral, where the straight line
  to the brick meets the post. All three count collisions in `info`.

Observation, action, reward and success are defined once, in robot_sql/tasks/pose_task.py,
and shared with the real arm. An env step sends one velocity command and integrates the
physics for 1 / control_hz seconds (20 Hz by default) without any real-time waiting.
Episodes end on success (terminated) or after `episode_seconds` (truncated). The velocity
command is re-sent every step, so control_hz must stay above 1 / 0.2 s (Intera's timeout).
"""
from __future__ import annotations

import gymnasium
import mujoco
import numpy as np

from robot_sql import sawyer
from robot_sql.sim.sawyer import MujocoSawyer
from robot_sql.sim.scripted import joints_reaching
from robot_sql.sim.scenes import arm_geoms, brick_grip_opening, build_model, table_height
from robot_sql.tasks import lego
from robot_sql.tasks.pose_task import ACTION_SIZE, OBSERVATION_SIZE, PoseTask, SuccessTimer, action_to_velocity, observation
from robot_sql.tasks.poses import Pose, quat_from_axis_angle, quat_multiply

START_JOINT_NOISE = 0.1  # rad, uniform around the neutral pose
NEUTRAL_HAND_QUAT = np.array([0.0, np.sqrt(0.5), np.sqrt(0.5), 0.0])  # tool z down (reference C)


class SawyerPoseEnv(gymnasium.Env):
    """Shared machinery: the robot, stepping, observation, reward, success and rendering."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    scene = "arm"
    task = PoseTask()
    default_episode_seconds = 10.0

    def __init__(self, control_hz: float = 20.0, velocity_fraction: float = 0.3,
                 episode_seconds: float | None = None, render_mode: str | None = None,
                 render_size: tuple[int, int] = (480, 640)):
        if control_hz <= 1.0 / sawyer.COMMAND_TIMEOUT_S:
            raise ValueError(f"control_hz must exceed {1.0 / sawyer.COMMAND_TIMEOUT_S} (the command timeout), got {control_hz}")
        if not 0.0 < velocity_fraction <= 1.0:
            raise ValueError(f"velocity_fraction must be in (0, 1], got {velocity_fraction}")
        if episode_seconds is not None and not episode_seconds > 0:
            raise ValueError(f"episode_seconds must be positive, got {episode_seconds}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.control_hz = control_hz
        self.velocity_fraction = velocity_fraction
        self.episode_seconds = episode_seconds or self.default_episode_seconds
        self.max_steps = int(round(self.episode_seconds * control_hz))
        self.render_mode = render_mode
        self.render_size = render_size
        self.metadata = {**self.metadata, "render_fps": int(round(control_hz))}
        self.robot = MujocoSawyer(build_model(self.scene))
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBSERVATION_SIZE,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_SIZE,), np.float32)
        self.target: Pose = self.robot.ee_pose()
        self._hand: Pose = self.target  # right_hand after the last reset or step
        self.success = SuccessTimer(self.task.hold_time)
        self._steps = 0
        self._renderer: mujoco.Renderer | None = None

    # ---- per task ----------------------------------------------------------------------
    def _new_episode(self) -> None:
        """Place the arm (and scene) for a new episode and set self.target."""
        raise NotImplementedError

    def _reward(self, hand: Pose, previous_hand: Pose) -> float:
        return self.task.reward(hand, self.target)

    def _within_tolerance(self, hand: Pose) -> bool:
        return self.task.within_tolerance(hand, self.target)

    # ---- gymnasium ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._new_episode()
        self._show_target()
        self.success.reset()
        self._steps = 0
        self._hand = self.robot.ee_pose()
        return self._observation(), self._info(False)

    def step(self, action):
        previous_hand = self._hand
        self.robot.send_velocity(action_to_velocity(action, self.velocity_fraction))
        self.robot.advance(1.0 / self.control_hz)
        self._steps += 1
        self._hand = self.robot.ee_pose()
        reward = self._reward(self._hand, previous_hand)
        succeeded = self.success.update(self._within_tolerance(self._hand), 1.0 / self.control_hz)
        truncated = self._steps >= self.max_steps and not succeeded
        return self._observation(), reward, succeeded, truncated, self._info(succeeded)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.robot.model, *self.render_size)
        self._renderer.update_scene(self.robot.data, camera="front")
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- helpers -----------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        return observation(self.robot.joint_positions(), self.robot.joint_velocities(), self._hand, self.target)

    def _info(self, succeeded: bool) -> dict:
        position_error, orientation_error = self.task.errors(self._hand, self.target)
        return {"position_error": position_error, "orientation_error": orientation_error,
                "is_success": succeeded}

    def _reset_arm_near_neutral(self) -> None:
        noise = self.np_random.uniform(-START_JOINT_NOISE, START_JOINT_NOISE, size=7)
        self.robot.reset(sawyer.named_pose("neutral") + noise)

    def _show_target(self) -> None:
        self.robot.data.mocap_pos[0], self.robot.data.mocap_quat[0] = self.target
        mujoco.mj_forward(self.robot.model, self.robot.data)


class SawyerReachEnv(SawyerPoseEnv):
    """Random target poses: position in TARGET_BOX (m, in base), tool pointing down, turned
    up to 45 degrees about the vertical from the neutral pose's orientation."""

    TARGET_BOX = (np.array([0.45, -0.2, 0.05]), np.array([0.75, 0.35, 0.35]))
    MAX_TARGET_YAW = np.pi / 4
    task = PoseTask(position_tolerance=0.01, orientation_tolerance=np.deg2rad(6.0), hold_time=0.25)

    def _new_episode(self) -> None:
        self._reset_arm_near_neutral()
        position = self.np_random.uniform(*self.TARGET_BOX)
        yaw = self.np_random.uniform(-self.MAX_TARGET_YAW, self.MAX_TARGET_YAW)
        self.target = (position, quat_multiply(quat_from_axis_angle([0, 0, 1], yaw), NEUTRAL_HAND_QUAT))


class SawyerReachNearEnv(SawyerReachEnv):
    """SawyerReach-v0 on a CI-sized budget: targets in a 10 cm cube about 20 cm from the
    start, tool down at the neutral yaw, 3 s episodes. Same reward and success as the full task."""

    TARGET_BOX = (np.array([0.55, -0.05, 0.1]), np.array([0.65, 0.05, 0.2]))
    MAX_TARGET_YAW = 0.0
    default_episode_seconds = 3.0


class SawyerLegoStackEnv(SawyerPoseEnv):
    """The fixed brick lies at a random place in BRICK_AREA (x, y in base) turned by a random
    yaw around BRICK_YAW; the arm starts near neutral holding the other brick."""

    scene = "lego"
    BRICK_AREA = (np.array([0.55, 0.0]), np.array([0.7, 0.25]))
    BRICK_YAW = np.pi / 2  # long side along base y: the held brick's direction at neutral
    MAX_BRICK_YAW_OFFSET = 0.3
    task = PoseTask()  # seated: 3 mm, 3 degrees, held 0.25 s
    default_episode_seconds = 15.0

    def _new_episode(self) -> None:
        self._reset_arm_near_neutral()
        self.robot.set_gripper(brick_grip_opening())
        x, y = self.np_random.uniform(*self.BRICK_AREA)
        yaw = self.BRICK_YAW + self.np_random.uniform(-self.MAX_BRICK_YAW_OFFSET, self.MAX_BRICK_YAW_OFFSET)
        self.set_fixed_brick(lego.fixed_brick_pose(x, y, yaw, table_height(self.robot.model)))

    def set_fixed_brick(self, pose: Pose) -> None:
        """Move the fixed brick and make the target the hand pose that seats the held brick on it."""
        brick = self.robot.model.body("fixed_brick")
        brick.pos, brick.quat = pose
        self.fixed_brick = pose
        self.target = lego.seated_hand_pose(pose)
        mujoco.mj_forward(self.robot.model, self.robot.data)


class SawyerPretrainEnv(SawyerPoseEnv):
    """Move the end effector fast in any direction: reward = its speed (m/s). The observation
    keeps the shared layout with the episode's start pose as the target, so a pretrained
    policy's inputs mean the same thing when it is fine-tuned on a reaching task."""

    default_episode_seconds = 5.0

    def _new_episode(self) -> None:
        self._reset_arm_near_neutral()
        self.target = self.robot.ee_pose()

    def _reward(self, hand: Pose, previous_hand: Pose) -> float:
        return float(np.linalg.norm(hand[0] - previous_hand[0]) * self.control_hz)

    def _within_tolerance(self, hand: Pose) -> bool:
        return False  # no target to reach: episodes run to the time limit


# right_hand positions (m, in base) around and inside the post, the combined task's starts included
WORKSPACE_AROUND_THE_POST = (np.array([0.38, 0.0, 0.12]), np.array([0.78, 0.28, 0.34]))


class SawyerStackEnv(SawyerLegoStackEnv):
    """Seat the brick on a brick at one fixed place, with the obstacle scene's post in the way.

    The reward is the Lego task's own; the post costs nothing (subclasses charge for it), but every
    env of the family reports `collision` (an arm, gripper or brick geom touches the post at the
    end of this step) and `collision_steps` (so far this episode) in `info`. The post is 6 cm
    across and the hand moves at most ~2 cm per step, so a check per step cannot miss it."""

    scene = "obstacle"
    # the reach task's tolerance (1 cm, 6 degrees, held 0.25 s), not the seat's 3 mm and 3 degrees: the
    # Lego precision took 36,000 steps per seed (docs/sim.md), beyond the composition study's budget
    task = PoseTask(position_tolerance=0.01, orientation_tolerance=np.deg2rad(6.0), hold_time=0.25)
    FIXED_BRICK = (0.78, 0.14, SawyerLegoStackEnv.BRICK_YAW)  # x, y (m, in base), yaw (rad)
    # (low, high) of right_hand's start position (m, in base); None: near neutral. A constituent's
    # Q-function must know the states the composed policy visits on its detour round the post: with
    # starts near neutral only, the stack agent had never left the straight line, and its
    # compositions hovered 2-9 cm off the target on 2 seeds of 3 (docs/sql.md, "Composition on the arm")
    START_BOX = WORKSPACE_AROUND_THE_POST
    default_episode_seconds = 10.0
    COLLISION_COST = 0.0  # reward per step touching the post, falling linearly to 0 at COST_MARGIN from it
    COST_MARGIN = 0.05  # m

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._obstacle = self.robot.model.geom("obstacle").id
        self._arm_geoms = arm_geoms(self.robot.model)
        self._fromto = np.zeros(6)
        self.collision_steps = 0

    def _new_episode(self) -> None:
        self._reset_arm_near_neutral()
        self.robot.set_gripper(brick_grip_opening())
        self.set_fixed_brick(lego.fixed_brick_pose(*self.FIXED_BRICK, table_height(self.robot.model)))
        if self.START_BOX is not None:  # tool at the target's orientation, placed by DLS kinematics
            joints_reaching(self.robot, (self.np_random.uniform(*self.START_BOX), self.target[1]))
            self.robot.set_gripper(brick_grip_opening())
        self.collision_steps = 0

    def obstacle_clearance(self) -> float:
        """Smallest distance (m) between the post and the arm's geoms; <= 0 when they touch."""
        model, data = self.robot.model, self.robot.data
        limit = self.COST_MARGIN + 0.01
        return min(mujoco.mj_geomDistance(model, data, self._obstacle, geom, limit, self._fromto)
                   for geom in self._arm_geoms)

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        clearance = self.obstacle_clearance()
        collision = clearance <= 0.0
        self.collision_steps += collision
        reward -= self.COLLISION_COST * float(np.clip(1.0 - clearance / self.COST_MARGIN, 0.0, 1.0))
        return observation, reward, terminated, truncated, {**info, "collision": collision,
                                                            "collision_steps": self.collision_steps}


class SawyerStackAvoidEnv(SawyerStackEnv):
    """SawyerStack-v0 with the post charged for: the combined task of the composition experiment,
    started near neutral, where going straight for the brick runs into the post."""

    COLLISION_COST = 5.0  # as the authors' real-Sawyer avoid task (docs: reference, soft-q-learning.md)
    START_BOX = None


class SawyerAvoidEnv(SawyerStackAvoidEnv):
    """Only stay clear of the post: no reward for the brick and no success (episodes run to the time
    limit). The observation is the stack task's, so its Q-function can be summed with the stack's.

    Episodes start with the hand anywhere in START_BOX (tool at the target's orientation), around
    and inside the post, and are short (3 s), so that a budget of steps sees many starts: started
    near neutral, or from 30 starts only, the avoid agent's Q-function hardly told the states where
    a stack policy meets the obstacle from free ones, and its composition with a stack agent touched
    it in every episode (docs/sql.md, "Composition on the arm")."""

    default_episode_seconds = 3.0
    START_BOX = WORKSPACE_AROUND_THE_POST

    def _reward(self, hand: Pose, previous_hand: Pose) -> float:
        return 0.0

    def _within_tolerance(self, hand: Pose) -> bool:
        return False
