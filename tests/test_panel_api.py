"""The panel's HTTP API over real HTTP against uvicorn on loopback: auth, validation, data, control."""
import json
import os
import stat
import subprocess

import httpx
import pytest
import yaml
import zmq.auth

from robot_sql.panel.app import COOKIE, MAX_BODY_BYTES, STATIC, host_allowed
from robot_sql.ports import free_port, free_port_block
from robot_sql.protocol import ControlClient, ControlError
from robot_sql.rundir import MetricsStore, RunDir
from tests.panel_support import ROBOT_SQL, kill_pid, start, stop, wait_for, wait_healthy

TOKEN = "panel-api-test-token-0123456789abcdef"


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
        yield {"base": base, "port": port, "run": run, "token": (run.root / "panel.token").read_text().strip(),
               "log": log}
    finally:
        stop(process)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def events(panel) -> list[str]:
    return [event[4] for event in httpx.get(f"{panel['base']}/api/events", headers=auth(panel["token"])).json()]


def strict_json(text: str):
    """JSON as the standard has it: no NaN or Infinity (Python's json takes them, browsers do not)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


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


def stream_updates(panel, **request):
    """(cursor, update) of each update of one /api/stream connection, until the caller stops."""
    with httpx.stream("GET", f"{panel['base']}/api/stream", timeout=10, **request) as response:
        assert response.status_code == 200, response.read()
        cursor = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                cursor = line[4:]
            elif line.startswith("data: "):
                yield cursor, json.loads(line[6:])


@pytest.mark.parametrize("resume_by", ["Last-Event-ID", "query"])
def test_a_reconnected_stream_resumes_after_what_was_sent(panel, resume_by):
    """The browser's reconnect sends the last update's id back: no curve point or event comes twice."""
    headers = auth(panel["token"])
    cursor, first = next(stream_updates(panel, headers=headers))
    assert first["series"]["q_loss"] and first["events"]
    store = MetricsStore(panel["run"].metrics)
    store.log("learner", 60, {"q_loss": 0.25})
    store.event("learner", "pause", "logged between the connections")
    store.close()
    resumed = (stream_updates(panel, headers={**headers, "Last-Event-ID": cursor}) if resume_by == "Last-Event-ID"
               else stream_updates(panel, headers=headers, params={"resume": cursor}))
    _, update = next(resumed)
    resumed.close()
    assert [point[2] for point in update["series"]["q_loss"]] == [0.25]
    assert set(update["series"]) == {"q_loss"}  # the other curves had nothing new
    assert [event[4] for event in update["events"]] == ["logged between the connections"]


@pytest.mark.parametrize("cursor", ["not json", "[1]", '{"events": -1}', '{"events": 1e400}', '{"events": NaN}',
                                    '{"series": {"q_loss": Infinity}}', '{"series": {"no_such_curve": 1.0}}',
                                    '{"events": 1, "page": 2}', '{"events": "x" }', "x" * 5000])
@pytest.mark.parametrize("sent_as", ["Last-Event-ID", "query"])
def test_a_stream_cursor_the_panel_did_not_make_gets_422(panel, cursor, sent_as):
    headers = auth(panel["token"])
    request = {"headers": {**headers, "Last-Event-ID": cursor}} if sent_as == "Last-Event-ID" else \
        {"headers": headers, "params": {"resume": cursor}}
    response = httpx.get(f"{panel['base']}/api/stream", timeout=10, **request)
    assert response.status_code == 422, response.text
    strict_json(response.text)
    assert httpx.get(f"{panel['base']}/api/stream", params={"resume": '{"events": 0}'}).status_code == 401


def test_status_says_the_learner_is_down_when_it_never_answered(panel):
    training = httpx.get(f"{panel['base']}/api/status", headers=auth(panel["token"])).json()["training"]
    assert training == {"state": "learner down", "detail": "never answered"}


def test_a_perturbation_test_is_refused_at_once_when_the_actor_does_not_answer(panel):
    """Not "202 started" followed by a failure elsewhere: the page hears the refusal in its answer."""
    response = httpx.post(f"{panel['base']}/api/perturbation", json={"kind": "wrench", "magnitude": 5},
                          headers=auth(panel["token"]), timeout=10)
    assert response.status_code == 503 and "did not answer 'status'" in response.json()["detail"]
    status = httpx.get(f"{panel['base']}/api/status", headers=auth(panel["token"])).json()
    assert status["perturbation"]["state"] == "idle"


def test_commands_to_absent_processes_fail_loudly(panel):
    headers = auth(panel["token"])
    estop = httpx.post(f"{panel['base']}/api/estop", headers=headers, timeout=10)
    assert estop.status_code == 503
    assert estop.json()["detail"]["actors"]["actor-0"]["ok"] is False
    assert httpx.post(f"{panel['base']}/api/training/pause", headers=headers, timeout=10).status_code == 503


# every state-changing endpoint, with a body it takes
POSTS = [("/api/training/pause", None), ("/api/training/resume", None), ("/api/training/stop", None),
         ("/api/training/checkpoint", None), ("/api/training/start", None), ("/api/estop", None),
         ("/api/rearm", {"confirm": True}), ("/api/episode/reset", {}), ("/api/perturbation", {"kind": "wrench", "magnitude": 5})]


@pytest.mark.parametrize("origin", ["http://127.0.0.1:9", "http://localhost:{port}", "null", None])
def test_a_cookie_post_from_another_origin_is_refused_and_does_nothing(panel, origin):
    """Same-site CSRF: a page on another port of this host gets the browser to send the login cookie."""
    headers = {} if origin is None else {"Origin": origin.format(port=panel["port"])}
    before = events(panel)
    with httpx.Client(base_url=panel["base"], cookies={COOKIE: panel["token"]}, headers=headers) as browser:
        for path, body in POSTS:
            response = browser.post(path, json=body, timeout=10)
            assert response.status_code == 403, (path, response.text)
            assert "cross-origin request refused" in response.json()["detail"]
    assert events(panel) == before  # estop, rearm and perturbation log an event when they reach the actor


def test_a_cookie_post_from_the_panels_own_page_is_accepted(panel):
    cookie, origin = {COOKIE: panel["token"]}, {"Origin": panel["base"]}
    with httpx.Client(base_url=panel["base"], cookies=cookie, headers=origin) as page:
        response = page.post("/api/estop", timeout=10)
    assert response.status_code == 503  # no actor runs: it went through to the actor, which did not answer
    assert response.json()["detail"]["actors"]["actor-0"]["ok"] is False
    assert events(panel)[-1].startswith("estop sent to 1 actor(s)")


def test_a_bearer_post_needs_no_origin(panel):
    response = httpx.post(f"{panel['base']}/api/rearm", json={"confirm": True}, headers=auth(panel["token"]), timeout=10)
    assert "origin" not in response.request.headers
    assert response.status_code == 503 and response.json()["detail"]["actors"]["actor-0"]["ok"] is False
    assert events(panel)[-1].startswith("rearm sent to 1 actor(s)")


@pytest.mark.parametrize("body", [None, {}, {"confirm": False}, {"confirm": "yes"}, {"confirm": 1},
                                  {"confirm": True, "actor": "actor-0"}])
def test_rearm_without_confirm_true_gets_422_and_reaches_no_actor(panel, body):
    """Re-arming lets the arm move: the request must say {"confirm": true} (the page asks in a dialog first)."""
    before = events(panel)
    response = httpx.post(f"{panel['base']}/api/rearm", json=body, headers=auth(panel["token"]), timeout=10)
    assert response.status_code == 422, response.text
    assert events(panel) == before  # a rearm that reaches the actors logs an event


@pytest.mark.parametrize("host", ["attacker.example:{port}", "attacker.example", "127.0.0.1.attacker.example:{port}",
                                  "attacker.example@127.0.0.1:{port}", "192.168.1.7:{port}"])
def test_a_host_header_that_does_not_name_the_panel_is_refused(panel, host):
    """DNS rebinding: a name of the attacker's that resolves to 127.0.0.1 makes its page same-origin with the panel."""
    headers = {**auth(panel["token"]), "Host": host.format(port=panel["port"])}
    for path in ("/health", "/api/status", "/"):
        response = httpx.get(panel["base"] + path, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert "DNS rebinding" in response.json()["detail"]
    headers["Host"] = f"localhost:{panel['port']}"
    assert httpx.get(f"{panel['base']}/api/status", headers=headers).status_code == 200


@pytest.mark.parametrize("host, bound, allowed", [
    ("127.0.0.1:8765", "127.0.0.1", True), ("localhost:8765", "127.0.0.1", True), ("[::1]:8765", "localhost", True),
    ("LOCALHOST", "127.0.0.1", True), ("rebound.example:8765", "127.0.0.1", False),
    ("10.0.0.5:8765", "127.0.0.1", False), ("10.0.0.5:8765", "0.0.0.0", True), ("[fe80::1]:8765", "::", True),
    ("127.0.0.1:8765", "0.0.0.0", True), ("rebound.example:8765", "0.0.0.0", False),
    ("10.0.0.5:8765", "10.0.0.5", True), ("localhost:8765", "10.0.0.5", False), ("robot.lab:8765", "robot.lab", True),
    ("x@10.0.0.5:8765", "0.0.0.0", False), ("", "127.0.0.1", False),
])
def test_which_host_headers_name_the_panel(host, bound, allowed):
    assert host_allowed(host, bound) is allowed


@pytest.mark.parametrize("token", ["a", "x" * 31])
@pytest.mark.parametrize("source", ["environment", "token file"])
def test_a_short_token_is_refused_at_start_with_one_line_and_status_2(tmp_path, token, source):
    environment = {key: value for key, value in os.environ.items() if key != "ROBOT_SQL_PANEL_TOKEN"}
    if source == "environment":
        environment["ROBOT_SQL_PANEL_TOKEN"] = token
    else:
        (tmp_path / "panel.token").write_text(token + "\n")
        (tmp_path / "panel.token").chmod(0o600)
    result = subprocess.run([ROBOT_SQL, "panel", "--run-dir", str(tmp_path), "--port", str(free_port())],
                            env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert "too short to be safe" in result.stderr and "at least 32" in result.stderr


@pytest.mark.parametrize("path, body", [
    ("/api/perturbation", '{"kind": "wrench", "magnitude": NaN}'),
    ("/api/perturbation", '{"kind": "wrench", "magnitude": Infinity}'),
    ("/api/perturbation", '{"kind": "wrench", "magnitude": -Infinity}'),
    ("/api/perturbation", '{"kind": "wrench", "magnitude": 1e400}'),
    ("/api/perturbation", '{"kind": "wrench", "magnitude": 5, "seed": 100000000000000000000000}'),
    ("/api/perturbation", '{"kind": "wrench", "magnitude": 5, "seed": %s}' % ("9" * 5000)),
    ("/api/episode/reset", '{"actor": [NaN]}'),
])
def test_numbers_out_of_range_in_a_body_get_a_422_in_valid_json(panel, path, body):
    response = httpx.post(panel["base"] + path, content=body,
                          headers={**auth(panel["token"]), "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "out of range" in json.dumps(strict_json(response.text)["detail"])


@pytest.mark.parametrize("query", ["/api/events?after=99999999999999999999999", "/api/events?after=-1",
                                   "/api/series/q_loss?since=nan", "/api/series/q_loss?since=1e400"])
def test_numbers_out_of_range_in_a_query_get_a_422_in_valid_json(panel, query):
    response = httpx.get(panel["base"] + query, headers=auth(panel["token"]))
    assert response.status_code == 422, response.text
    assert strict_json(response.text)["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize("sent, path", [
    ("with its length", "/api/perturbation"),
    ("with its length", "/api/training/pause"),  # refused before the endpoint runs, which would not read it
    ("chunked", "/api/perturbation"),  # refused while it is read
])
def test_a_20_mb_body_gets_413(panel, sent, path):
    chunks = [b" " * (1024 * 1024)] * 20
    body = b"".join(chunks) if sent == "with its length" else iter(chunks)  # an iterator goes chunked
    response = httpx.post(panel["base"] + path, content=body, timeout=60,
                          headers={**auth(panel["token"]), "content-type": "application/json"})
    assert response.status_code == 413 and str(MAX_BODY_BYTES) in response.json()["detail"]
    assert ("content-length" in response.request.headers) == (sent == "with its length")
    assert httpx.get(f"{panel['base']}/health").status_code == 200


def test_permissive_token_file_is_refused(tmp_path):
    (tmp_path / "panel.token").write_text("secret\n")
    (tmp_path / "panel.token").chmod(0o644)
    environment = {key: value for key, value in os.environ.items() if key != "ROBOT_SQL_PANEL_TOKEN"}
    process = start([ROBOT_SQL, "panel", "--run-dir", str(tmp_path), "--port", str(free_port())], tmp_path / "out", environment)
    assert process.wait(30) == 2
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
                  env={"ROBOT_SQL_PANEL_TOKEN": TOKEN, "ROBOT_SQL_PANEL_POLL_INTERVAL_S": "0.2",
                       "ROBOT_SQL_PANEL_CURVE_SECRET_KEY": str(keys / "panel.key_secret"),
                       "ROBOT_SQL_PANEL_LEARNER_PUBLIC_KEY": str(keys / "learner.key")})
    relaunched = None
    try:
        base = f"http://127.0.0.1:{panel_port}"
        wait_healthy(base, panel, tmp_path / "panel.out")
        client = httpx.Client(base_url=base, headers=auth(TOKEN), timeout=10)

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
        wait_for(lambda: client.get("/api/status").json()["training"]["state"] == "stopped", 30, "the header's 'stopped'")
        panel_events = [tuple(event[3:]) for event in client.get("/api/events").json() if event[2] == "panel"]
        assert ("stopped", "learner stopped: it was told to stop") in panel_events  # not "lost"
        assert not any(kind == "lost" for kind, _ in panel_events)
        started = client.post("/api/training/start").json()  # nothing answers: launch one for this run
        relaunched = started["pid"]
        assert started["started"] is True
        training = client.get("/api/status").json()["training"]
        assert training["state"] in ("starting", "running"), training  # "starting" until it answers
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
