"""The panel's curves API over real HTTP against uvicorn: every metric a run logged, per source (the
learner, each actor), and another run in the same runs folder to compare with, named safely."""
import json
import os
import time

import httpx
import pytest

from robot_sql.ports import free_port
from robot_sql.rundir import MetricsStore, RunDir
from tests.panel_support import ROBOT_SQL, start, stop, wait_healthy

TOKEN = "panel-curves-test-token-0123456789abcdef"


def seed(run: RunDir, start_time: float, scale: float) -> None:
    """A learner's q_mean and stein_norm, two actors' episode_length, at known times."""
    store = MetricsStore(run.metrics)
    rows = []
    for i in range(4):
        rows.append((start_time + i, "learner", "q_mean", 100 * i, scale * i))
        rows.append((start_time + i, "learner", "stein_norm", 100 * i, 0.5))
        rows.append((start_time + i + 0.25, "arm-a", "episode_length", 100 * i, 10.0 + i))
        rows.append((start_time + i + 0.5, "arm-b", "episode_length", 100 * i, 20.0 + i))
    store._db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
    store.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/current (the panel's), runs/earlier (a finished run), runs/notes (no metrics), a stray file,
    a link to a run outside runs/; the panel serves runs/current."""
    root = tmp_path_factory.mktemp("runs")
    current, earlier = RunDir.create(root / "current"), RunDir.create(root / "earlier")
    outside = RunDir.create(tmp_path_factory.mktemp("elsewhere") / "secret")
    seed(current, 1_000_000.0, 1.0)
    seed(earlier, 500_000.0, 2.0)
    seed(outside, 1.0, 3.0)
    (root / "notes").mkdir()
    (root / "stray.txt").write_text("not a run")
    (root / "linked").symlink_to(outside.root)
    port = free_port()
    log = root / "panel.out"
    process = start([ROBOT_SQL, "panel", "--run-dir", str(current.root), "--port", str(port)], log,
                    env={"ROBOT_SQL_PANEL_TOKEN": TOKEN})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, log)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as api:
            yield {"api": api, "base": base, "root": root, "current": current, "earlier": earlier}
    finally:
        stop(process)


def test_the_runs_beside_this_one_are_listed_and_nothing_else(runs):
    reply = runs["api"].get("/api/runs").json()
    assert reply["current"] == "current"
    assert {run["name"]: run["current"] for run in reply["runs"]} == {"current": True, "earlier": False}


def test_metric_names_come_from_the_runs_store(runs):
    api = runs["api"]
    metrics = {metric["name"]: metric for metric in api.get("/api/metric-names").json()["metrics"]}
    assert sorted(metrics) == ["episode_length", "q_mean", "stein_norm"]
    assert metrics["episode_length"]["source"] == "actor" and metrics["q_mean"]["source"] == "learner"
    assert "Stein" in metrics["stein_norm"]["title"]
    store = MetricsStore(runs["current"].metrics)
    store.log("learner", 500, {"kernel_bandwidth": 0.7})  # a metric logged for the first time appears
    store.close()
    assert "kernel_bandwidth" in [metric["name"] for metric in api.get("/api/metric-names").json()["metrics"]]
    other = api.get("/api/metric-names", params={"run": "earlier"}).json()
    assert other["run"] == "earlier" and "kernel_bandwidth" not in [metric["name"] for metric in other["metrics"]]


def test_points_come_per_source_and_from_where_the_page_left_off(runs):
    api = runs["api"]
    reply = api.get("/api/points/episode_length").json()
    assert reply["first_time"] == 1_000_000.25
    by_source: dict[str, list] = {}
    for time_, step, value, source in reply["points"]:
        by_source.setdefault(source, []).append((time_, step, value))
    assert by_source == {"arm-a": [(1_000_000.25 + i, 100 * i, 10.0 + i) for i in range(4)],
                         "arm-b": [(1_000_000.5 + i, 100 * i, 20.0 + i) for i in range(4)]}
    times = [point[0] for point in reply["points"]]
    assert times == sorted(times)
    newer = api.get("/api/points/episode_length", params={"since": 1_000_002.25}).json()["points"]
    assert [(point[3], point[2]) for point in newer] == [("arm-b", 22.0), ("arm-a", 13.0), ("arm-b", 23.0)]
    only_b = api.get("/api/points/episode_length", params={"source": "arm-b", "limit": 2}).json()["points"]
    assert [(point[3], point[2]) for point in only_b] == [("arm-b", 22.0), ("arm-b", 23.0)]
    assert api.get("/api/points/no_such_metric").json() == {"metric": "no_such_metric", "run": "current",
                                                            "first_time": None, "points": []}


def test_another_run_is_read_from_its_own_store_and_left_untouched(runs):
    api = runs["api"]
    folder = runs["earlier"].root
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    reply = api.get("/api/points/q_mean", params={"run": "earlier"}).json()
    assert reply["run"] == "earlier" and reply["first_time"] == 500_000.0
    assert [point[2] for point in reply["points"]] == [0.0, 2.0, 4.0, 6.0]  # its values (scale 2), not this run's
    assert {point[3] for point in reply["points"]} == {"learner"}
    assert api.get("/api/points/q_mean", params={"run": "current"}).json()["points"][-1][2] == 3.0
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before  # no -wal/-shm left behind


@pytest.mark.parametrize("name", ["..", ".", "../current", "current/..", "a/b", "/etc", "earlier/", "..%2Fcurrent",
                                  "notes", "stray.txt", "linked", "nope", "earlier\x00", "x" * 129, ""])
@pytest.mark.parametrize("path", ["/api/points/q_mean", "/api/metric-names"])
def test_a_run_name_that_is_not_a_run_directory_here_gets_422(runs, name, path):
    response = runs["api"].get(path, params={"run": name})
    assert response.status_code == 422, (name, response.text)
    assert "secret" not in response.text and "3.0" not in response.text  # nothing of the run outside runs/


@pytest.mark.parametrize("query", ["since=nan", "since=1e400", "limit=0", "limit=100000", "limit=x"])
def test_bad_point_queries_get_422(runs, query):
    assert runs["api"].get(f"/api/points/q_mean?{query}").status_code == 422
    assert runs["api"].get(f"/api/points/{'m' * 201}").status_code == 422


@pytest.mark.parametrize("path", ["/api/runs", "/api/metric-names", "/api/points/q_mean",
                                  "/api/points/q_mean?run=earlier", "/api/metric-names?run=earlier"])
def test_the_curves_api_needs_the_token(runs, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}):
        response = httpx.get(runs["base"] + path, headers=headers, cookies={"robot_sql_panel": "wrong"})
        assert response.status_code == 401, (path, headers)
        assert "q_mean" not in response.text and "earlier" not in response.text


def test_the_stream_names_each_points_source(runs):
    """The live curves draw one line per actor: every streamed point says whose it is."""
    store = MetricsStore(runs["current"].metrics)
    store.log("arm-a", 600, {"episode_return": -3.0})
    store.log("arm-b", 600, {"episode_return": -4.0})
    store.close()
    with httpx.stream("GET", f"{runs['base']}/api/stream", headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10) as response:
        first = next(json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
    assert [(point[3], point[2]) for point in first["series"]["episode_return"]] == [("arm-a", -3.0), ("arm-b", -4.0)]


def test_runs_root_can_be_set_apart_from_the_run_directory(tmp_path):
    """ROBOT_SQL_PANEL_RUNS_ROOT (or runs_root in the panel's YAML): compare with runs kept elsewhere."""
    run = RunDir.create(tmp_path / "here" / "run")
    archive = RunDir.create(tmp_path / "archive" / "old-run")
    seed(archive, time.time() - 100, 1.0)
    port = free_port()
    process = start([ROBOT_SQL, "panel", "--run-dir", str(run.root), "--port", str(port)], tmp_path / "panel.out",
                    env={"ROBOT_SQL_PANEL_TOKEN": TOKEN, "ROBOT_SQL_PANEL_RUNS_ROOT": str(tmp_path / "archive")})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, tmp_path / "panel.out")
        reply = httpx.get(f"{base}/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert reply["root"] == str((tmp_path / "archive").resolve()) and reply["current"] is None
        assert [entry["name"] for entry in reply["runs"]] == ["old-run"]
        points = httpx.get(f"{base}/api/points/q_mean", params={"run": "old-run"},
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()["points"]
        assert len(points) == 4
    finally:
        stop(process)
    assert not os.path.exists(tmp_path / "archive" / "old-run" / "metrics.sqlite-wal")
