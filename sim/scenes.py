"""The MuJoCo scenes: MJCF files in sim/assets/, plus the Lego bricks built from the task's sizes.

`build_model("arm")` is the Sawyer on its pedestal (reach and pretraining);
`build_model("lego")` adds the table, a fixed brick (moved by the env) and a brick held in
the gripper; `build_model("obstacle")` is the Lego scene with a post (OBSTACLE) standing on the
table between the start pose and the brick of the obstacle tasks. The bricks are generated from robot_sql/tasks/lego.py so the simulator and the
task's target pose can never disagree about them.
"""
from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from robot_sql.tasks import lego

ASSETS = Path(__file__).resolve().parent / "assets"
SCENES = {"arm": "scene.xml", "lego": "lego.xml", "obstacle": "lego.xml"}
# the obstacle scene's post, a cylinder in base: centre, radius and half height (m). 14 cm high, it
# stands on the straight line from the start pose to the brick of the obstacle tasks, higher than
# the held brick's underside on that line, so a hand going straight for the brick runs the brick
# into it; a detour of about 10 cm to either side passes it. The arm's geoms stay at least 4 cm
# from it at the start and 10 cm at the target (docs/sql.md, "Composition on the arm"). It is a
# region, not a solid (it never pushes the arm): the envs count touching it as a collision and
# may charge for it.
OBSTACLE = (np.array([0.60, 0.14, 0.07]), 0.03, 0.07)
OBSTACLE_RGBA = [0.95, 0.55, 0.1, 0.45]
BRICK_RGBA = {"fixed_brick": [0.1, 0.35, 0.8, 1.0], "held_brick": [0.85, 0.15, 0.1, 1.0]}
BRICK_MASS = 0.0023  # kg


def _add_brick(parent: mujoco.MjsBody, name: str, pos, quat, contype: int, conaffinity: int) -> None:
    body = parent.add_body(name=name, pos=pos, quat=quat, mass=BRICK_MASS,
                           inertia=[1e-7, 1e-7, 1e-7], explicitinertial=True)
    body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=lego.BRICK_SIZE / 2,
                  rgba=BRICK_RGBA[name], contype=contype, conaffinity=conaffinity, friction=[0.8, 0.02, 0.001])
    for i, stud in enumerate(lego.stud_positions()):
        # drawn only: the bodies' faces are what touch (see robot_sql/tasks/lego.py)
        body.add_geom(name=f"{name}_stud{i}", type=mujoco.mjtGeom.mjGEOM_CYLINDER, pos=stud,
                      size=[lego.STUD_RADIUS, lego.STUD_HEIGHT / 2, 0], rgba=BRICK_RGBA[name],
                      contype=0, conaffinity=0, group=1)


def build_model(scene: str = "arm") -> mujoco.MjModel:
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; known: {sorted(SCENES)}")
    spec = mujoco.MjSpec.from_file(str(ASSETS / SCENES[scene]))
    if scene in ("lego", "obstacle"):
        # the fixed brick is static (part of the world); the env moves it between episodes
        _add_brick(spec.worldbody, "fixed_brick", pos=[0.6, 0.1, lego.BRICK_SIZE[2] / 2], quat=[1, 0, 0, 0],
                   contype=0, conaffinity=1)
        # right_gripper_base's frame is right_hand's, where HELD_BRICK_IN_HAND is given
        held_pos, held_quat = lego.HELD_BRICK_IN_HAND
        _add_brick(spec.body("right_gripper_base"), "held_brick", pos=held_pos, quat=held_quat,
                   contype=1, conaffinity=0)
    if scene == "obstacle":
        centre, radius, half_height = OBSTACLE
        spec.worldbody.add_geom(name="obstacle", type=mujoco.mjtGeom.mjGEOM_CYLINDER, pos=centre, size=[radius, half_height, 0],
                                rgba=OBSTACLE_RGBA, contype=0, conaffinity=0)
    return spec.compile()


def table_height(model: mujoco.MjModel) -> float:
    """z of the table top in `base`."""
    table = model.geom("table")
    return float(table.pos[2] + table.size[2])


def arm_geoms(model: mujoco.MjModel) -> list[int]:
    """The geoms that can collide on the arm side: the links, gripper and held brick (contype 1)."""
    return [geom for geom in range(model.ngeom) if model.geom_contype[geom] == 1]


def brick_grip_opening() -> float:
    """Finger joint travel that closes each finger on the held brick's sides."""
    return float(np.clip(lego.BRICK_SIZE[1] / 2, 0.0, 0.020833))
