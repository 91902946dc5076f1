"""The panel's HTTP API over real HTTP against uvicorn on loopback: auth, validation, data, control."""
import json
import os
import stat

import httpx
import pytest
import yaml
import zmq.auth

from robot_sql.panel.app import STATIC
from robot_sql.protocol import ControlClient, ControlError
from robot_sql.rundir import MetricsStore, RunDir
from tests.panel_support import ROBOT_SQL, free_port, free_port_block, kill_pid, start, stop, wait_for, wait_healthy


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """A panel on a run with some metrics, a checkpoint and a report; its learner and actor are not running."""
    run = RunDir.create(tmp_path_factory.mktemp("run"))
    store = MetricsStore(run.metrics)
    for step in range(5):
        store.log("learner", step * 10, {"q_loss": 2.0 - step * 0.25, "weight_version": step})
    store.event("learner", "start", "seeded by the test")
    store.close()
    (run.checkpoints / "agent.pt").write_bytes(b"x" * 100)
    (run.reports / "perturbation-1.json").write_text(json.dumps({
        "created": 1.0, "env": "E", "spec": {"kind": "wrench", "magnitude": 5.0}, "trials": [],
        "summary": {"trials": 1, "success_rate": 1.0}}))
    port = free_port()
    log = run.root / "panel.out"
    environment = {key: value for key, value in os.environ.items() if key != "ROBOT_SQL_PANEL_TOKEN"}
    process = start([ROBOT_SQL, "panel", "--run-dir", str(run.root), "--port", str(port),
                     "--learner-control", f"tcp://127.0.0.1:{free_port()}",
                     "--actor-control", f"tcp://127.0.0.1:{free_port()}"], log, env=environment)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, log)
        yield {"base": base, "run": run, "token": (run.root / "panel.token").read_text().strip(), "log": log}
    finally:
        stop(process)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_token_is_generated_once_with_private_permissions_and_printed(panel):
    token_file = panel["run"].root / "panel.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(panel["token"]) >= 32
    assert f"?token={panel['token']}" in panel["log"].read_text()


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/static/panel.js"), ("GET", "/api/status"), ("GET", "/api/stream"),
    ("GET", "/api/reports"), ("GET", "/metrics"), ("POST", "/api/estop"), ("POST", "/api/rearm"),
    ("POST", "/api/training/start"), ("POST", "/api/perturbation"),
])
def test_every_endpoint_but_health_needs_the_token(panel, method, path):
    base = panel["base"]
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    for headers, cookies in [({}, {}), (auth("wrong"), {}), (auth(panel["token"] + "x"), {}), ({}, {"robot_sql_panel": "wrong"})]:
        response = httpx.request(method, base + path, headers=headers, cookies=cookies, json={"kind": "bad"})
        assert response.status_code == 401, (path, headers, response.text)


def test_login_link_sets_a_cookie_that_authenticates_the_page_and_the_api(panel):
    base = panel["base"]
    assert httpx.get(f"{base}/?token=wrong").status_code == 401
    with httpx.Client(base_url=base) as browser:
        login = browser.get(f"/?token={panel['token']}")
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
        page = browser.get("/")
        assert page.status_code == 200 and 'id="estop"' in page.text
        assert browser.get("/api/overview").json()["joints"]["names"][0] == "right_j0"
        for name in ("panel.js", "plot.js", "panel.css"):
            assert browser.get(f"/static/{name}").status_code == 200
        assert browser.get("/static/..%2Fapp.py").status_code == 404


def test_page_loads_nothing_from_outside():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


@pytest.mark.parametrize("body, problem", [
    ({"kind": "laser", "magnitude": 5}, "kind"),
    ({"kind": "wrench"}, "magnitude"),
    ({"kind": "wrench", "magnitude": -1}, "magnitude"),
    ({"kind": "wrench", "magnitude": 500}, "exceeds the limit"),
    ({"kind": "displacement", "magnitude": 2.0}, "exceeds the limit"),
    ({"kind": "wrench", "magnitude": 5, "link": "head"}, "unknown link"),
    ({"kind": "wrench", "magnitude": 5, "trials": 0}, "trials"),
    ({"kind": "wrench", "magnitude": 5, "duration_s": 30}, "duration_s"),
    ({"kind": "wrench", "magnitude": 5, "speed": 3}, "speed"),
])
def test_bad_perturbation_bodies_get_422_that_says_why(panel, body, problem):
    response = httpx.post(f"{panel['base']}/api/perturbation", json=body, headers=auth(panel["token"]))
    assert response.status_code == 422
    assert problem in json.dumps(response.json()["detail"])


def test_other_bad_requests_are_4xx(panel):
    headers = auth(panel["token"])
    base = panel["base"]
    assert httpx.post(f"{base}/api/episode/reset", json={"actor": 3}, headers=headers).status_code == 422
    assert httpx.post(f"{base}/api/episode/reset", content=b"{not json", headers={**headers, "content-type": "application/json"}).status_code == 422
    assert httpx.post(f"{base}/api/episode/reset", json={"actor": "actor-9"}, headers=headers).status_code == 404
    assert httpx.post(f"{base}/api/training/jump", headers=headers).status_code in (404, 405)
    assert httpx.get(f"{base}/api/reports/nope.json", headers=headers).status_code == 404


def test_run_data_is_served(panel):
    headers = auth(panel["token"])
    base = panel["base"]
    series = httpx.get(f"{base}/api/series/q_loss", headers=headers).json()
    assert [point[2] for point in series] == [2.0, 1.75, 1.5, 1.25, 1.0]
    assert [c["name"] for c in httpx.get(f"{base}/api/checkpoints", headers=headers).json()] == ["agent.pt"]
    reports = httpx.get(f"{base}/api/reports", headers=headers).json()
    assert reports[0]["name"] == "perturbation-1.json" and reports[0]["summary"]["success_rate"] == 1.0
    assert httpx.get(f"{base}/api/reports/perturbation-1.json", headers=headers).json()["env"] == "E"
    metrics = httpx.get(f"{base}/metrics", headers=headers).text
    assert "robot_sql_q_loss 1.0" in metrics and 'robot_sql_process_up{process="learner"} 0.0' in metrics


def test_stream_pushes_new_points_without_reload(panel):
    with httpx.stream("GET", f"{panel['base']}/api/stream", headers=auth(panel["token"]), timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        updates = (json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
        first = next(updates)
        assert [point[2] for point in first["series"]["q_loss"]][-1] == 1.0
        assert first["events"][0][4] == "seeded by the test"
        store = MetricsStore(panel["run"].metrics)
        store.log("learner", 50, {"q_loss": 0.5})
        store.close()
        fresh = wait_for(lambda: next(updates)["series"].get("q_loss"), 10, "the new point in the stream", 0)
        assert [point[2] for point in fresh] == [0.5]


def test_commands_to_absent_processes_fail_loudly(panel):
    headers = auth(panel["token"])
    estop = httpx.post(f"{panel['base']}/api/estop", headers=headers, timeout=10)
    assert estop.status_code == 503
    assert estop.json()["detail"]["actors"]["actor-0"]["ok"] is False
    assert httpx.post(f"{panel['base']}/api/training/pause", headers=headers, timeout=10).status_code == 503


def test_permissive_token_file_is_refused(tmp_path):
    (tmp_path / "panel.token").write_text("secret\n")
    (tmp_path / "panel.token").chmod(0o644)
    environment = {key: value for key, value in os.environ.items() if key != "ROBOT_SQL_PANEL_TOKEN"}
    process = start([ROBOT_SQL, "panel", "--run-dir", str(tmp_path), "--port", str(free_port())], tmp_path / "out", environment)
    assert process.wait(30) != 0
    assert "chmod 600" in (tmp_path / "out").read_text()


def test_training_controls_drive_a_real_curve_learner_and_start_relaunches_it(tmp_path):
    """Over CURVE, as for a learner on another machine (the browser test covers plain loopback)."""
    run = RunDir.create(tmp_path / "run")
    port = free_port_block(3)
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("learner", "panel"):
        zmq.auth.create_certificates(keys, name)
    (tmp_path / "learner.yaml").write_text(yaml.safe_dump({
        "env": "MultiGoal-v0", "checkpoint_every_s": 600, "curve_secret_key": str(keys / "learner.key_secret")}))
    learner = start([ROBOT_SQL, "learner", "--run-dir", str(run.root), "--config", str(tmp_path / "learner.yaml"),
                     "--port", str(port)], tmp_path / "learner.out")
    panel_port = free_port()
    panel = start([ROBOT_SQL, "panel", "--run-dir", str(run.root), "--port", str(panel_port),
                   "--learner-control", f"tcp://127.0.0.1:{port + 2}"], tmp_path / "panel.out",
                  env={"ROBOT_SQL_PANEL_TOKEN": "test-token", "ROBOT_SQL_PANEL_POLL_INTERVAL_S": "0.2",
                       "ROBOT_SQL_PANEL_CURVE_SECRET_KEY": str(keys / "panel.key_secret"),
                       "ROBOT_SQL_PANEL_LEARNER_PUBLIC_KEY": str(keys / "learner.key")})
    relaunched = None
    try:
        base = f"http://127.0.0.1:{panel_port}"
        wait_healthy(base, panel, tmp_path / "panel.out")
        client = httpx.Client(base_url=base, headers=auth("test-token"), timeout=10)

        def learner_state() -> str | None:
            learner = client.get("/api/status").json()["learner"]
            return learner["status"]["state"] if learner["connected"] else None

        wait_for(lambda: learner_state() == "running", 60, "the learner to answer the panel")
        with pytest.raises(ControlError, match="timeout"), ControlClient(f"tcp://127.0.0.1:{port + 2}", 0.5) as plain:
            plain.call("status")  # without the keys nobody gets an answer

        assert client.post("/api/training/pause").json()["reply"] == {"paused": True}
        wait_for(lambda: learner_state() == "paused", 10, "the learner to report paused")
        assert client.post("/api/training/start").json()["started"] is False  # a learner answers: resume it
        wait_for(lambda: learner_state() == "running", 10, "the learner to report running")
        checkpoint = client.post("/api/training/checkpoint").json()["reply"]
        assert checkpoint["path"].endswith(".pt")
        assert any(c["name"] == os.path.basename(checkpoint["path"]) for c in client.get("/api/checkpoints").json())

        assert client.post("/api/training/stop").json()["reply"] == {"stopping": True}
        assert learner.wait(30) == 0
        started = client.post("/api/training/start").json()  # nothing answers: launch one for this run
        relaunched = started["pid"]
        assert started["started"] is True
        wait_for(lambda: learner_state() == "running", 60, "the relaunched learner to answer")
        assert client.get("/api/status").json()["launched_learner_pid"] == relaunched
        events = [event[4] for event in client.get("/api/events").json()]
        assert any("started robot-sql learner" in message for message in events)
        assert client.post("/api/training/stop").json()["reply"] == {"stopping": True}
        wait_for(lambda: client.get("/api/status").json()["launched_learner_pid"] is None, 30, "the relaunched learner to stop")
    finally:
        stop(panel)
        stop(learner)
        if relaunched:
            kill_pid(relaunched)


def test_arm_view_draws_the_reported_pose():
    import io

    import numpy as np
    from PIL import Image

    from robot_sql import sawyer
    from robot_sql.panel.scene import FRAME_SIZE, ArmView

    view = ArmView()
    try:
        neutral = np.asarray(Image.open(io.BytesIO(view.png(sawyer.named_pose("neutral"), (0.6, 0.1, 0.2)))))
        shipping = np.asarray(Image.open(io.BytesIO(view.png(sawyer.named_pose("shipping")))))
        with pytest.raises(ValueError):
            view.png([0.0] * 6)
    finally:
        view.close()
    assert neutral.shape[:2] == FRAME_SIZE and neutral.std() > 10
    assert np.abs(neutral.astype(int) - shipping.astype(int)).mean() > 2  # another pose, another picture
