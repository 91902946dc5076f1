"""The panel's report pages and checkpoint history over real HTTP (uvicorn on loopback): the token,
bad input (422), names that try to leave the history folder, downloads, and a real evaluation subprocess."""
import io
import json
import os

import httpx
import pytest
import torch

from robot_sql import checkpoint_history
from robot_sql.perturbation import PerturbationSpec, save_report, unfinished_report
from robot_sql.ports import free_port
from robot_sql.rundir import MetricsStore, RunDir
from robot_sql.sql import SoftQLearning, SQLConfig
from tests.panel_support import ROBOT_SQL, start, stop, wait_for, wait_healthy

TOKEN = "panel-reports-test-token-0123456789abcdef"


def learner_checkpoint(updates: int) -> bytes:
    """What the learner writes: the agent's state (a small MultiGoal agent) and the sampling RNG."""
    agent = SoftQLearning(SQLConfig(obs_dim=2, act_dim=2, hidden_sizes=(16, 16)))
    agent.updates = updates
    buffer = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "sample_rng": "{}"}, buffer)
    return buffer.getvalue()


def a_report(trials: int = 2) -> dict:
    steps = 40
    times = [0.05 * (step + 1) for step in range(steps)]
    trial = {"trial": 0, "seed": 0, "push_time_s": 0.5, "success": True, "reference_success": True, "recovered": True,
             "time_to_recover_s": 0.4, "max_deviation_m": 0.03, "episode_return": -3.0, "steps": steps,
             "trace": {"time_s": times, "deviation_m": [0.0] * 10 + [0.03] * 10 + [0.001] * 20,
                       "error_m": [0.2 - 0.004 * step for step in range(steps)],
                       "reference_error_m": [0.2 - 0.0045 * step for step in range(steps)],
                       "push_end_s": 0.7, "tolerance_m": 0.01}}
    return {"created": 1_700_000_000.0, "env": "SawyerReach-v0",
            "spec": PerturbationSpec(kind="wrench", magnitude=20.0, trials=trials).model_dump(),
            "trials": [{**trial, "trial": i, "seed": i} for i in range(trials)],
            "summary": {"trials": trials, "success_rate": 1.0, "reference_success_rate": 1.0, "recovered_rate": 1.0,
                        "mean_recovery_s": 0.4, "max_deviation_m": 0.03, "mean_deviation_m": 0.03}}


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """A panel on a run with a checkpoint history of two (three were written) and two reports; no processes."""
    run = RunDir.create(tmp_path_factory.mktemp("run"))
    for updates in (100, 200, 300):
        checkpoint_history.record(run.checkpoints, learner_checkpoint(updates), updates, keep=2, env="MultiGoal-v0",
                                  now=1_700_000_000.0 + updates)
    completed = save_report(run, a_report())
    aborted = save_report(run, unfinished_report(PerturbationSpec(kind="wrench", magnitude=5.0), "aborted",
                                                 "actor-0 refused 'perturb': perturb_aborted: aborted 1.20 s into an episode"))
    (run.root / "secret.txt").write_text("not for the panel's visitors")
    port = free_port()
    log = run.root / "panel.out"
    process = start([ROBOT_SQL, "panel", "--run-dir", str(run.root), "--port", str(port)], log,
                    env={"ROBOT_SQL_PANEL_TOKEN": TOKEN})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, log)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:
            yield {"api": api, "base": base, "run": run, "completed": completed.stem, "aborted": aborted.stem}
    finally:
        stop(process)


def history_names(panel) -> list[str]:
    return [entry["name"] for entry in panel["api"].get("/api/checkpoints/history").json()["checkpoints"]]


@pytest.mark.parametrize("method, path", [
    ("GET", "/reports/{completed}"), ("GET", "/checkpoints"), ("GET", "/api/checkpoints/history"),
    ("GET", "/api/checkpoints/history/{newest}"), ("POST", "/api/checkpoints/history/{newest}/evaluate"),
    ("GET", "/api/evaluation"), ("GET", "/static/report.js"),
])
def test_every_new_route_needs_the_token(panel, method, path):
    path = path.format(completed=panel["completed"], newest=history_names(panel)[0])
    for headers, cookies in [({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({}, {"robot_sql_panel": "wrong"})]:
        response = httpx.request(method, panel["base"] + path, headers=headers, cookies=cookies, json={"episodes": 1})
        assert response.status_code == 401, (path, response.text)
    assert panel["api"].request(method, path, json={"episodes": 0}).status_code in (200, 422)


def test_a_report_has_a_page_and_an_unknown_or_strange_one_has_none(panel):
    api = panel["api"]
    for report_id in (panel["completed"], f"{panel['completed']}.json", panel["aborted"]):
        page = api.get(f"/reports/{report_id}")
        assert page.status_code == 200 and 'src="/static/report.js"' in page.text
    assert api.get(f"/api/reports/{panel['completed']}.json").json()["trials"][1]["trace"]["tolerance_m"] == 0.01
    assert api.get("/reports/perturbation-19700101-000000-000000-wrench").status_code == 404
    for strange in ("..%2Fpanel.token", "..%2F..%2Fsecret.txt", ".hidden", "a%00b"):
        response = api.get(f"/reports/{strange}")
        assert response.status_code in (404, 422), (strange, response.status_code)


def test_the_history_is_listed_newest_first_and_downloads_the_kept_files(panel):
    api = panel["api"]
    listing = api.get("/api/checkpoints/history").json()
    entries = listing["checkpoints"]
    assert [entry["updates"] for entry in entries] == [300, 200]  # three written, two kept
    assert entries[0]["env"] == "MultiGoal-v0" and entries[0]["time"] == 1_700_000_300.0
    assert entries[0]["name"] == "learner-u000000300-20231114T221820Z.pt"
    folder = checkpoint_history.history_folder(panel["run"].checkpoints)
    for entry in entries:
        download = api.get(f"/api/checkpoints/history/{entry['name']}")
        assert download.status_code == 200 and download.content == (folder / entry["name"]).read_bytes()
        assert entry["name"] in download.headers["content-disposition"] and entry["bytes"] == len(download.content)
    page = api.get("/checkpoints")
    assert page.status_code == 200 and 'src="/static/checkpoints.js"' in page.text


@pytest.mark.parametrize("name, status", [
    ("learner-u000000100-20231114T221500Z.pt", 404),  # a real name once, no longer kept
    ("index.json", 422), ("learner.pt", 422), (".learner-u000000300-20231114T221820Z.pt", 422),
    ("..%2Flearner.pt", 422), ("..%2F..%2Fsecret.txt", 422), ("%2E%2E", 422),
    ("learner-u000000300-20231114T221820Z.pt%2F..%2F..%2F..%2Fsecret.txt", 422),
])
def test_a_name_outside_the_history_is_refused(panel, name, status):
    api = panel["api"]
    assert api.get(f"/api/checkpoints/history/{name}").status_code in (status, 404)
    assert api.post(f"/api/checkpoints/history/{name}/evaluate", json={"episodes": 1}).status_code in (status, 404, 405)
    assert api.get("/api/evaluation").json()["state"] in ("idle", "done")  # nothing started


@pytest.mark.parametrize("body", [
    {"episodes": 0}, {"episodes": 201}, {"episodes": "many"}, {"episodes": 1.5}, {"episodes": 5, "threads": 16},
    {"episodes": 5, "seed": -1}, [5],
])
def test_bad_evaluation_requests_get_422(panel, body):
    response = panel["api"].post(f"/api/checkpoints/history/{history_names(panel)[0]}/evaluate", json=body)
    assert response.status_code == 422, response.text


def test_a_checkpoint_is_evaluated_in_the_simulator_one_at_a_time(panel):
    api = panel["api"]
    newest = history_names(panel)[0]
    started = api.post(f"/api/checkpoints/history/{newest}/evaluate", json={"episodes": 3, "seed": 7})
    assert started.status_code == 202 and started.json()["state"] == "running"
    second = api.post(f"/api/checkpoints/history/{history_names(panel)[1]}/evaluate", json={"episodes": 3})
    assert second.status_code == 409 and "one at a time" in second.json()["detail"]
    job = wait_for(lambda: (job := api.get("/api/evaluation").json())["state"] != "running" and job, 120,
                   "the evaluation to end")
    assert job["state"] == "done", job
    result = job["result"]
    assert result["episodes"] == 3 and result["seed"] == 7 and result["env"] == "MultiGoal-v0"
    assert 0.0 <= result["success_rate"] <= 1.0 and result["mean_return"] < 0  # MultiGoal pays a cost per step
    listed = api.get("/api/checkpoints/history").json()["checkpoints"][0]
    assert listed["name"] == newest and listed["evaluation"]["mean_return"] == result["mean_return"]
    assert (panel["run"].root / "evaluations" / f"{newest[:-3]}.json").is_file()
    events = [event[4] for event in MetricsStore(panel["run"].metrics).events()]
    assert any(f"evaluation of {newest} on 3 episode(s)" in event for event in events)
