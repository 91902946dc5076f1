"""The arm view as the task's scene: what the actor reports (scene, target pose, fixed brick), how
the panel checks it (robot_sql.protocol.check_arm_state), the camera's bounds (422), and rendering
once per (actor, state, camera) however many pages ask. In process: FastAPI's TestClient on the app."""
import io
import threading
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import robot_sql  # noqa: F401  (registers the envs)
from robot_sql.actor import Actor
from robot_sql.panel.app import PanelSettings, create_app
from robot_sql.panel.scene import AZIMUTH_RANGE, ELEVATION_RANGE
from robot_sql.ports import free_port
from robot_sql.protocol import ProtocolError, check_arm_state

TOKEN = "panel-scene-test-token-0123456789abcdef"


def reported(env_id: str, seed: int = 0) -> dict:
    """What an actor on `env_id` puts in its status for the arm, after a reset."""
    env = gymnasium.make(env_id)
    try:
        env.reset(seed=seed)
        return Actor._arm_state(SimpleNamespace(env=env), {})  # the method reads self.env only
    finally:
        env.close()


@pytest.fixture(scope="module")
def lego_state() -> dict:
    return reported("SawyerLegoStack-v0")


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    settings = PanelSettings(run_dir=tmp_path_factory.mktemp("run"), actor_control=[f"tcp://127.0.0.1:{free_port()}"])
    app = create_app(settings, TOKEN)  # no lifespan: nothing polls, the test sets what the actor "said"
    client = TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        yield SimpleNamespace(client=client, link=app.state.fleet.actors[0], view=app.state.arm_view)
    finally:
        app.state.arm_view.close()


def test_the_actor_reports_its_tasks_world(lego_state):
    assert lego_state["scene"] == "lego"
    assert len(lego_state["target_quat"]) == 4 and len(lego_state["fixed_brick_position"]) == 3
    state = check_arm_state(lego_state)
    assert state.fixed_brick[:2] == pytest.approx(state.target[:2])  # the target seats the held brick on it
    reach = check_arm_state(reported("SawyerReach-v0"))
    assert reach.scene == "arm" and reach.target is not None and reach.fixed_brick is None
    assert check_arm_state({"steps": 3}) is None  # no robot: nothing to draw


@pytest.mark.parametrize("change, kind", [
    ({"joint_positions": [0.0] * 6}, "schema"),
    ({"joint_positions": [0.0] * 6 + ["x"]}, "schema"),
    ({"joint_positions": [0.0] * 6 + [float("nan")]}, "nonfinite"),
    ({"joint_positions": [0.0] * 6 + [40.0]}, "out_of_range"),
    ({"scene": "kitchen"}, "schema"),
    ({"target_position": [0.5, 0.0, 1e6]}, "out_of_range"),
    ({"target_quat": [1.0, 1.0, 0.0, 0.0]}, "out_of_range"),
    ({"fixed_brick_quat": [1.0, 0.0, 0.0]}, "schema"),
    ({"fixed_brick_position": None}, "schema"),
    ({"fixed_brick_quat": "delete"}, "schema"),
])
def test_a_bad_arm_state_is_refused_by_kind(lego_state, change, kind):
    status = {**lego_state, **change}
    status = {name: value for name, value in status.items() if value != "delete"}
    with pytest.raises(ProtocolError) as refused:
        check_arm_state(status)
    assert refused.value.kind == kind


def test_the_lego_scene_draws_the_fixed_brick_where_the_actor_put_it(panel, lego_state):
    panel.link.last_status = lego_state
    here = panel.client.get("/api/frame", params={"view": "work"})
    moved = dict(lego_state, fixed_brick_position=[lego_state["fixed_brick_position"][0] + 0.05,
                                                   *lego_state["fixed_brick_position"][1:]])
    panel.link.last_status = moved
    there = panel.client.get("/api/frame", params={"view": "work"})
    assert here.status_code == there.status_code == 200 and here.headers["content-type"] == "image/png"
    first, second = (np.asarray(Image.open(io.BytesIO(r.content))).astype(int) for r in (here, there))
    assert np.abs(first - second).mean() > 0.5  # the brick moved in the picture
    panel.link.last_status = dict(lego_state, joint_positions=[float("nan")] * 7)
    assert panel.client.get("/api/frame").status_code == 503  # refused before it reaches the renderer


def test_two_pages_asking_for_the_same_state_get_one_render(panel, lego_state):
    panel.link.last_status = dict(lego_state, joint_positions=[0.1] * 7)
    before = panel.view.renders
    replies, start = [], threading.Barrier(2)

    def ask():
        start.wait()
        replies.append(panel.client.get("/api/frame", params={"azimuth": 30, "elevation": -40}))

    tabs = [threading.Thread(target=ask) for _ in range(2)]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join()
    assert [reply.status_code for reply in replies] == [200, 200]
    assert replies[0].content == replies[1].content
    assert panel.view.renders == before + 1
    other_camera = panel.client.get("/api/frame", params={"azimuth": 31, "elevation": -40})
    assert other_camera.content != replies[0].content and panel.view.renders == before + 2
    panel.link.last_status = dict(lego_state, joint_positions=[0.2] * 7)  # the actor's next state
    panel.client.get("/api/frame", params={"azimuth": 30, "elevation": -40})
    assert panel.view.renders == before + 3


@pytest.mark.parametrize("params", [
    {"azimuth": AZIMUTH_RANGE[1] + 1}, {"azimuth": AZIMUTH_RANGE[0] - 1}, {"elevation": ELEVATION_RANGE[1] + 1},
    {"elevation": ELEVATION_RANGE[0] - 1}, {"azimuth": 1.5}, {"azimuth": "nan"}, {"elevation": "x"},
    {"view": "top"}, {"azimuth": 10**30},
])
def test_a_camera_out_of_range_gets_422(panel, lego_state, params):
    panel.link.last_status = lego_state
    before = panel.view.renders
    assert panel.client.get("/api/frame", params=params).status_code == 422
    assert panel.view.renders == before


def test_the_frame_needs_the_token(panel):
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        assert panel.client.get("/api/frame", headers=headers).status_code == 401
