"""The arm as the panel draws it: the MuJoCo Sawyer posed at the joint angles an actor reports.

The same picture for the simulator and the real arm (the panel renders its own copy of the
model; nothing but joint angles crosses the wire). MuJoCo renders headless through EGL; an
OpenGL context belongs to the thread that made it, so all rendering runs on one thread.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from robot_sql import sawyer

FRAME_SIZE = (360, 480)  # height, width


class RenderError(RuntimeError):
    """No picture: this machine cannot render (no EGL/OpenGL)."""


class ArmView:
    def __init__(self, size: tuple[int, int] = FRAME_SIZE):
        self.size = size
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panel-render")
        self._scene = None  # (model, data, renderer), made on the render thread at first use

    def png(self, joint_positions, target_position=None) -> bytes:
        """A PNG of the arm at `joint_positions` (rad, right_j0..6), with the target marker at `target_position` (m)."""
        angles = np.asarray(joint_positions, dtype=np.float64)
        if angles.shape != (len(sawyer.JOINT_NAMES),) or not np.all(np.isfinite(angles)):
            raise ValueError(f"need {len(sawyer.JOINT_NAMES)} finite joint angles, got {joint_positions!r}")
        return self._thread.submit(self._render, angles, target_position).result()

    def _render(self, angles: np.ndarray, target_position) -> bytes:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import mujoco
        from PIL import Image

        from robot_sql.sim.scenes import build_model

        if self._scene is None:
            model = build_model("arm")
            try:
                self._scene = (model, mujoco.MjData(model), mujoco.Renderer(model, *self.size))
            except (RuntimeError, mujoco.FatalError) as error:
                raise RenderError(f"cannot render the arm here: {error}") from error
        model, data, renderer = self._scene
        for name, angle in zip(sawyer.JOINT_NAMES, angles):
            data.qpos[model.joint(name).qposadr[0]] = angle
        # no target known: park the marker under the floor
        data.mocap_pos[0] = target_position if target_position is not None else (0.0, 0.0, -5.0)
        mujoco.mj_forward(model, data)
        renderer.update_scene(data, camera="front")
        buffer = io.BytesIO()
        Image.fromarray(renderer.render()).save(buffer, format="PNG")
        return buffer.getvalue()

    def close(self) -> None:
        def release():
            if self._scene is not None:
                self._scene[2].close()

        self._thread.submit(release).result()
        self._thread.shutdown()
