"""The task's world as the panel draws it: the MuJoCo Sawyer posed at the joint angles an actor
reports, in the scene of its task (sim/scenes.py: "arm" for reach, "lego" and "obstacle" with the
table, the fixed brick where the actor's episode put it and the held brick in the gripper), with
the target pose's marker, from an orbitable camera that frames the arm and the work area.

The same picture for the simulator and the real arm (the panel renders its own copy of the
models; nothing but the few numbers of robot_sql.protocol.ArmState crosses the wire). MuJoCo
renders headless through EGL; an OpenGL context belongs to the thread that made it, so all
rendering runs on one thread.

Rendering is done once per actor state, not once per browser tab: `frame` keeps the last
CACHE_FRAMES pictures keyed by (actor, the arm state it reported, camera), so every tab that asks
for the same state and view gets the same bytes, rendered once (`renders` counts the renders).
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from robot_sql import sawyer
from robot_sql.protocol import ArmState, check_arm_state

FRAME_SIZE = (360, 480)  # height, width
CACHE_FRAMES = 16  # a few actors times a few views; one PNG is ~100 KB
# the free camera, turned by azimuth (degrees about the vertical; 180 looks from the front of the robot
# back at it) and elevation (degrees, negative looks down). View "arm" looks at LOOKAT (m, base frame:
# between the arm's base and the table) from DISTANCE: the arm and the work area; view "work" looks
# between the target and the fixed brick (else LOOKAT) from WORK_DISTANCE: bricks, gripper, target up close
LOOKAT = (0.4, 0.05, 0.15)
DISTANCE, WORK_DISTANCE = 1.6, 0.45
VIEWS = ("arm", "work")
DEFAULT_AZIMUTH, DEFAULT_ELEVATION = 150, -25
AZIMUTH_RANGE, ELEVATION_RANGE = (-180, 180), (-85, 10)
PARKED = (0.0, 0.0, -5.0)  # under the floor: where a marker or brick the actor did not report goes
FINGER_JOINTS = ("right_gripper_l_finger_joint", "right_gripper_r_finger_joint")


class RenderError(RuntimeError):
    """No picture: this machine cannot render (no EGL/OpenGL)."""


class Camera(NamedTuple):
    azimuth: int = DEFAULT_AZIMUTH
    elevation: int = DEFAULT_ELEVATION
    view: str = "arm"

    def check(self) -> "Camera":
        if not (AZIMUTH_RANGE[0] <= self.azimuth <= AZIMUTH_RANGE[1]
                and ELEVATION_RANGE[0] <= self.elevation <= ELEVATION_RANGE[1] and self.view in VIEWS):
            raise ValueError(f"camera {self} outside azimuth {AZIMUTH_RANGE}, elevation {ELEVATION_RANGE}, view {VIEWS}")
        return self


class ArmView:
    def __init__(self, size: tuple[int, int] = FRAME_SIZE, cache_frames: int = CACHE_FRAMES):
        self.size = size
        self.renders = 0  # pictures rendered (not served from the cache)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panel-render")
        self._scenes: dict[str, tuple] = {}  # scene -> (model, data, renderer), made on the render thread
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cache_frames = cache_frames
        self._lock = threading.Lock()  # one render per key: a second tab waits for the first tab's picture

    def frame(self, actor: str, state: ArmState, camera: Camera = Camera()) -> bytes:
        """The PNG of `actor`'s arm in `state` seen by `camera`: from the cache when it has been drawn."""
        key = (actor, state, camera.check())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            png = self._thread.submit(self._render, state, camera).result()
            self.renders += 1
            self._cache[key] = png
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
            return png

    def png(self, joint_positions, target_position=None, camera: Camera = Camera()) -> bytes:
        """A PNG of the arm at `joint_positions` (rad, right_j0..6), with the target marker at `target_position` (m)."""
        status = {"joint_positions": [float(q) for q in np.asarray(joint_positions, dtype=np.float64).ravel()]}
        if target_position is not None:
            status["target_position"] = [float(v) for v in target_position]
        state = check_arm_state(status)  # ProtocolError (a ValueError) for the wrong count or NaN
        return self._thread.submit(self._render, state, camera.check()).result()

    def _scene(self, name: str) -> tuple:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import mujoco

        from robot_sql.sim.scenes import build_model

        if name not in self._scenes:
            model = build_model(name)
            try:
                self._scenes[name] = (model, mujoco.MjData(model), mujoco.Renderer(model, *self.size))
            except (RuntimeError, mujoco.FatalError) as error:
                raise RenderError(f"cannot render the arm here: {error}") from error
        return self._scenes[name]

    def _render(self, state: ArmState, camera: Camera) -> bytes:
        import mujoco
        from PIL import Image

        from robot_sql.sim.scenes import brick_grip_opening

        model, data, renderer = self._scene(state.scene)
        for name, angle in zip(sawyer.JOINT_NAMES, state.joint_positions):
            data.qpos[model.joint(name).qposadr[0]] = angle
        if state.scene != "arm":  # the Lego scenes: the fingers close on the held brick, as in the envs
            opening = brick_grip_opening()
            for name, travel in zip(FINGER_JOINTS, (opening, -opening)):
                data.qpos[model.joint(name).qposadr[0]] = travel
            brick = model.body("fixed_brick")
            brick.pos, brick.quat = ((state.fixed_brick[:3], state.fixed_brick[3:]) if state.fixed_brick
                                     else (PARKED, (1.0, 0.0, 0.0, 0.0)))
        target = state.target or PARKED + (1.0, 0.0, 0.0, 0.0)
        data.mocap_pos[0], data.mocap_quat[0] = target[:3], target[3:]
        mujoco.mj_forward(model, data)
        view = mujoco.MjvCamera()
        view.type = mujoco.mjtCamera.mjCAMERA_FREE
        close = camera.view == "work"
        points = [pose[:3] for pose in (state.target, state.fixed_brick) if pose]  # the brick and where it goes
        view.lookat[:] = np.mean(points, axis=0) if close and points else LOOKAT
        view.distance = WORK_DISTANCE if close else DISTANCE
        view.azimuth, view.elevation = camera.azimuth, camera.elevation
        renderer.update_scene(data, camera=view)
        buffer = io.BytesIO()
        Image.fromarray(renderer.render()).save(buffer, format="PNG")
        return buffer.getvalue()

    def close(self) -> None:
        def release():
            for _, _, renderer in self._scenes.values():
                renderer.close()

        self._thread.submit(release).result()
        self._thread.shutdown()
