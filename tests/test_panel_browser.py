"""The panel in headless Chromium: start training on the simulated arm, watch the curves grow and
survive a dropped event stream, see the arm under slow renders, run perturbation tests (one
aborted by an e-stop), see the e-stop at 1280 and 390 px wide (screenshots: the test's tmp_path,
and $ROBOT_SQL_ARTIFACTS when set), re-arm through its confirmation, kill the learner and see its
values go stale, orbit the arm view's camera, evaluate a checkpoint from the history page; a page on
another port of the host cannot pause training through the login cookie."""
import http.server
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from robot_sql.ports import free_port, free_port_block
from robot_sql.rundir import MetricsStore, RunDir
from tests.conftest import require
from tests.panel_support import ROBOT_SQL, BreakableProxy, kill_pid, start, stop, wait_for, wait_healthy

TOKEN = "browser-test-token-0123456789abcdef"
SMALL_SQL = {"hidden_sizes": [32, 32], "batch_size": 32, "kernel_particles": 8, "value_particles": 8}


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


@pytest.fixture
def simulated_run(tmp_path):
    """A panel and one unpaced actor on SawyerReach-v0; the learner is left for the panel's Start to launch."""
    require(shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)")
    run = RunDir.create(tmp_path / "run")
    learner_port, actor_control, panel_port = free_port_block(3), free_port(), free_port()
    (tmp_path / "learner.yaml").write_text(yaml.safe_dump({
        "env": "SawyerReach-v0", "sql": SMALL_SQL, "min_replay": 200, "publish_every": 10, "log_every_s": 0.3,
        "checkpoint_every_s": 600}))
    (tmp_path / "actor.yaml").write_text(yaml.safe_dump({
        "env": "SawyerReach-v0", "learner": f"127.0.0.1:{learner_port}", "paced": False,
        "stats_every_s": 0.3, "control_bind": f"tcp://127.0.0.1:{actor_control}",
        "control_token_file": str(run.root / "control.token")}))
    run.token("control")  # as the dry run does: the actor reads it, the learner the panel starts keeps it
    earlier = MetricsStore(RunDir.create(tmp_path / "earlier-run").metrics)  # a run beside it, to compare with
    earlier.log("learner", 0, {"stein_norm": 0.125})
    earlier.log("learner", 10, {"stein_norm": 0.25})
    earlier.close()
    panel = start([ROBOT_SQL, "panel", "--run-dir", str(run.root), "--port", str(panel_port),
                   "--learner-control", f"tcp://127.0.0.1:{learner_port + 2}",
                   "--actor-control", f"tcp://127.0.0.1:{actor_control}",
                   "--learner-config", str(tmp_path / "learner.yaml")], tmp_path / "panel.out",
                  env={"ROBOT_SQL_PANEL_TOKEN": TOKEN, "ROBOT_SQL_PANEL_POLL_INTERVAL_S": "0.3"})
    actor = start([ROBOT_SQL, "actor", "--config", str(tmp_path / "actor.yaml"), "--name", "sim-arm"],
                  tmp_path / "actor.out")
    api = httpx.Client(base_url=f"http://127.0.0.1:{panel_port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    # the browser goes through it: every arm picture takes 2.5 s, longer than the old 2 s refresh
    proxy = BreakableProxy(panel_port, slow_prefix=b"GET /api/frame", delay_s=2.5)
    launched = []
    try:
        wait_healthy(str(api.base_url).rstrip("/"), panel, tmp_path / "panel.out")
        yield {"api": api, "run": run, "launched": launched, "actor": actor, "actor_log": tmp_path / "actor.out", "proxy": proxy,
               "page_url": f"http://127.0.0.1:{proxy.port}"}
    finally:
        proxy.close()
        pid = api.get("/api/status").json()["launched_learner_pid"] if panel.poll() is None else None
        stop(actor)
        stop(panel)
        for learner in {pid, *launched} - {None}:
            kill_pid(learner)


def screenshot(page, tmp_path: Path, name: str) -> None:
    """What the operator sees at the top of the page, in the test's tmp_path and in $ROBOT_SQL_ARTIFACTS when set."""
    path = tmp_path / name
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path))
    if os.environ.get("ROBOT_SQL_ARTIFACTS"):
        folder = Path(os.environ["ROBOT_SQL_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)


def estop_inside_viewport(page) -> bool:
    box, viewport = page.locator("#estop").bounding_box(), page.viewport_size
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= viewport["width"]
            and box["y"] + box["height"] <= viewport["height"])


def no_duplicates(page) -> bool:
    """Every curve's times strictly increase and no event row comes twice (what a replayed history breaks)."""
    return page.evaluate("""() => Object.values(plots).every((plot) => plot.xs.every((x, i) => i === 0 || x > plot.xs[i - 1]))
        && new Set([...document.querySelectorAll('#events li')].map((item) => item.dataset.id)).size
           === document.querySelectorAll('#events li').length""")


def check_curves(page, api, run: RunDir, tmp_path: Path) -> None:
    """The curves a learning run needs: any metric the server names, hover values, x by updates,
    zoom, smoothing, one line per actor, and another run of the same runs folder beside this one."""
    from playwright.sync_api import expect

    wanted = ["stein_norm", "kernel_bandwidth", "q_mean", "soft_value", "episode_length", "actor_loop_period_mean_ms"]
    page.wait_for_function(f"wanted => wanted.every((name) => [...document.querySelectorAll('#metric-select option')]"
                           f".some((option) => option.value === name))", arg=wanted, timeout=20_000)
    offered = page.eval_on_selector_all("#metric-select option", "options => options.map((option) => option.value)")
    assert set(offered) <= {metric["name"] for metric in api.get("/api/metric-names").json()["metrics"]}

    page.select_option("#metric-select", "stein_norm")
    page.wait_for_function("explorer.metric === 'stein_norm' && explorer.plot.length >= 2", timeout=20_000)
    assert page.evaluate("explorer.plot.curve.name") == "stein_norm"
    drawn = page.evaluate("explorer.plot.series.get('learner').map((point) => point[2])")
    served = [point[2] for point in api.get("/api/points/stein_norm").json()["points"]]
    assert drawn == served[:len(drawn)]

    canvas = page.locator("#explorer canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    tip = page.locator("#explorer .plot-tip")
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.6)
    expect(tip).to_be_visible()
    expect(tip).to_have_text(re.compile(r"^learner: -?[0-9.e+-]+ at \d\d:\d\d:\d\d$"))

    page.check("input[name=x-axis][value=updates]")
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6)
    text = tip.text_content()
    assert re.fullmatch(r"learner: -?[0-9.e+-]+ at update \d+", text), text
    steps = {point[1] for point in api.get("/api/points/stein_norm").json()["points"]}
    assert int(text.rsplit(" ", 1)[1]) in steps
    assert page.evaluate("explorer.plot.frame.xHigh") <= max(steps)

    span = page.evaluate("explorer.plot.frame.xHigh - explorer.plot.frame.xLow")
    page.mouse.move(box["x"] + 80, box["y"] + box["height"] * 0.5)  # drag to zoom, double-click to reset
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=4)
    page.mouse.up()
    zoomed = page.evaluate("explorer.plot.view")
    assert zoomed is not None and zoomed[1] - zoomed[0] < 0.6 * span
    canvas.dblclick()
    assert page.evaluate("explorer.plot.view") is None
    page.check("input[name=x-axis][value=time]")

    page.fill("#smoothing", "0.9")  # smoothing: the drawn line is no longer the raw values
    assert page.evaluate("""() => { const line = explorer.plot.lines()[0].points.map((p) => p[1]);
        const raw = explorer.plot.series.get('learner').map((p) => p[2]);
        return line.length === raw.length && line.some((y, i) => Math.abs(y - raw[i]) > 1e-9); }""")
    page.fill("#smoothing", "0")

    page.select_option("#compare-run", "earlier-run")
    page.wait_for_function("explorer.plot.compare && explorer.plot.compare.series.size > 0", timeout=10_000)
    assert page.evaluate("explorer.plot.legend()") == ["learner", "earlier-run: learner"]
    assert page.evaluate("explorer.plot.compare.series.get('learner').map((p) => p[2])") == [0.125, 0.25]
    # by wall time the other run starts where this one starts
    assert page.evaluate("Math.abs(explorer.plot.lines()[1].points[0][0] - explorer.plot.lines()[0].points[0][0])") < 1e-3

    store = MetricsStore(run.metrics)  # a second arm reports: its own line on the live curve
    store.log("arm-b", 0, {"episode_return": -1.0})
    store.close()
    page.wait_for_function("plots.episode_return.legend().includes('arm-b')", timeout=10_000)
    assert page.evaluate("plots.episode_return.legend()") == ["sim-arm", "arm-b"]
    page.locator("#curves").screenshot(path=str(tmp_path / "panel-curves.png"))
    if os.environ.get("ROBOT_SQL_ARTIFACTS"):
        shutil.copy(tmp_path / "panel-curves.png", Path(os.environ["ROBOT_SQL_ARTIFACTS"]) / "panel-curves.png")


def test_operator_trains_perturbs_and_estops_the_simulated_arm(simulated_run, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    api = simulated_run["api"]

    def actor_status() -> dict:
        if simulated_run["actor"].poll() is not None:
            raise AssertionError(f"the actor exited:\n{simulated_run['actor_log'].read_text()[-3000:]}")
        return api.get("/api/status").json()["actors"][0]

    def run_perturbation(trials: int) -> None:
        page.select_option("#perturb-form [name=kind]", "wrench")
        page.fill("#perturb-form [name=magnitude]", "30")
        page.fill("#perturb-form [name=trials]", str(trials))
        page.click("#perturb-form button[type=submit]")

    wait_for(lambda: actor_status()["connected"], 60, "the actor's control channel")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            base = simulated_run["page_url"]
            outside = []
            page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(base) else None)
            page.goto(f"{base}/?token={TOKEN}")
            expect(page.locator("#stream-state")).to_have_text("live", timeout=15_000)
            expect(page.locator("#training-state")).to_have_text("training: learner down", timeout=15_000)

            # Start: progress until the learner answers
            page.click("button[data-training=start]")
            expect(page.locator("#message")).to_contain_text("launched learner pid", timeout=15_000)
            simulated_run["launched"].append(api.get("/api/status").json()["launched_learner_pid"])
            expect(page.locator("#training-state")).to_have_text("training: running", timeout=90_000)
            expect(page.locator("#message")).to_contain_text("answers: training running")
            page.wait_for_function("plots.q_loss.length >= 3 && plots.episode_return.length >= 1", timeout=90_000)

            # the arm appears although every picture takes longer than the old refresh period
            expect(page.locator("#frame")).to_be_visible(timeout=30_000)
            # orbit the camera: the next picture is asked for from there, and it arrives
            page.click("#camera [data-orbit='20,0']")
            expect(page.locator("#camera-state")).to_have_text("azimuth 170°, elevation -25°")
            page.wait_for_function("""() => { const image = document.querySelector('#frame');
                return image.src.includes('azimuth=170&elevation=-25') && image.complete && image.naturalWidth > 0; }""",
                                   timeout=30_000)

            # the event stream is cut: the browser reconnects and the curves go on without a replay
            events_before = page.locator("#events li").count()
            points = page.evaluate("plots.q_loss.length")
            simulated_run["proxy"].drop()
            expect(page.locator("#stream-state")).to_have_text("reconnecting", timeout=10_000)
            expect(page.locator("#stream-state")).to_have_text("live", timeout=30_000)
            page.wait_for_function(f"plots.q_loss.length > {points}", timeout=30_000)
            assert no_duplicates(page)
            assert page.locator("#events li").count() < 2 * events_before
            assert page.evaluate("plots.q_loss.length") <= len(api.get("/api/series/q_loss").json())

            check_curves(page, api, simulated_run["run"], tmp_path)

            # a completed perturbation test, then one that an e-stop aborts
            run_perturbation(2)
            expect(page.locator("#message")).to_contain_text("perturbation test started on actor-0")
            report_row = page.locator("#reports tbody tr").first
            expect(report_row.locator("td").nth(4)).to_have_text("completed", timeout=90_000)
            expect(report_row.locator("td").nth(3)).to_have_text("2")
            expect(report_row.locator("td").nth(5)).to_contain_text("/")  # success pushed / untouched
            report_row.locator("td").nth(4).click()
            expect(page.locator("#report-detail")).to_contain_text("max_deviation_m")
            completed_report = report_row.locator("td").first.locator("a").get_attribute("href")
            run_perturbation(20)
            expect(page.locator("#perturb-state")).to_contain_text("running", timeout=15_000)
            wait_for(lambda: actor_status()["status"]["perturbing"], 30, "the actor to run the test")

            # e-stop: the banner, the red page, the header, at 1280 and at 390 px, E-STOP always in view
            page.click("#estop")
            expect(page.locator("#estop-banner")).to_be_visible(timeout=10_000)
            expect(page.locator("#estop-banner")).to_contain_text("actor-0 holds the arm until re-armed")
            expect(page.locator("#arm-state")).to_contain_text("E-STOPPED")
            expect(page.locator("body")).to_have_class("estopped")
            expect(page.locator("#training-state")).to_have_text("training: running")
            held = actor_status()["status"]
            assert held["estopped"] and held["holding"]
            expect(report_row.locator("td").nth(4)).to_contain_text("aborted", timeout=30_000)
            aborted_report = report_row.locator("td").first.locator("a").get_attribute("href")
            assert page.evaluate("""() => {  // the health table stays inside its card, clear of the Arm card beside it
                const training = document.querySelector('#training'), box = document.querySelector('#health').parentElement;
                return training.getBoundingClientRect().right <= document.querySelector('#arm').getBoundingClientRect().left
                    && box.scrollWidth <= box.clientWidth && training.scrollWidth <= training.clientWidth;
            }""")
            assert estop_inside_viewport(page)
            screenshot(page, tmp_path, "panel-1280.png")
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            assert estop_inside_viewport(page)
            expect(page.locator("#estop-banner")).to_be_in_viewport()
            expect(page.locator("#training-state")).to_be_in_viewport()
            screenshot(page, tmp_path, "panel-390.png")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_timeout(300)
            assert estop_inside_viewport(page)  # sticky
            expect(page.locator("#estop-banner")).to_be_in_viewport()
            page.set_viewport_size({"width": 1280, "height": 800})

            # while e-stopped a perturbation test is refused, and the page says so (not "started")
            run_perturbation(3)
            expect(page.locator("#message")).to_contain_text("e-stopped: re-arm before a perturbation test", timeout=10_000)

            # re-arm takes a confirmation that says what will happen; cancelling leaves the arm held
            page.click("#rearm")
            expect(page.locator("#rearm-dialog")).to_be_visible()
            expect(page.locator("#rearm-dialog")).to_contain_text("moves again")
            page.wait_for_timeout(1000)
            assert actor_status()["status"]["estopped"]
            page.click("#rearm-dialog button[value=cancel]")
            expect(page.locator("#rearm-dialog")).to_be_hidden()
            page.wait_for_timeout(1000)
            assert actor_status()["status"]["estopped"]
            page.click("#rearm")
            page.click("#rearm-confirm")
            expect(page.locator("#arm-state")).to_contain_text("running", timeout=10_000)
            expect(page.locator("#estop-banner")).to_be_hidden()
            page.click("#reset-episode")
            expect(page.locator("#message")).to_contain_text("/api/episode/reset: ok", timeout=10_000)

            # the learner dies: "learner lost", its values greyed and marked stale
            api.post("/api/training/checkpoint").raise_for_status()  # one for the history page to evaluate
            kill_pid(simulated_run["launched"][0])
            expect(page.locator("#training-state")).to_have_text("training: learner down", timeout=20_000)
            expect(page.locator("#events")).to_contain_text("learner lost")
            expect(page.locator("#health tbody tr").first).to_have_class("stale")
            expect(page.locator("canvas[data-curve=q_loss]")).to_have_class("stale")
            expect(page.locator("canvas[data-curve=episode_return]")).not_to_have_class("stale")
            assert outside == [], f"the page fetched from outside: {outside}"

            # each report has a page: its parameters and, per trial, the deviation over time drawn from its trace
            report_page = page  # the panel is done with: the same page, logged in
            errors = []
            report_page.on("pageerror", lambda error: errors.append(str(error)))
            report_page.goto(f"{base}{completed_report}")
            expect(report_page.locator("#parameters")).to_contain_text("wrench")
            expect(report_page.locator("#summary")).to_contain_text("success, untouched")
            expect(report_page.locator(".trial")).to_have_count(2)
            deviation = report_page.locator(".trial").first.locator("svg.plot path.deviation")
            expect(deviation).to_have_count(1)
            assert int(deviation.get_attribute("data-points")) > 20
            assert len(deviation.get_attribute("d").split("L")) > 20  # a drawn line, not an empty path
            box = deviation.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 5
            expect(report_page.locator(".trial").first.locator("svg.plot path.reference")).to_have_count(1)
            expect(report_page.locator(".trial").first).to_contain_text(re.compile(r"untouched: (yes|no)"))
            screenshot(report_page, tmp_path, "report-1280.png")
            report_page.goto(f"{base}{aborted_report}")
            expect(report_page.locator("#outcome")).to_contain_text("ABORTED")
            expect(report_page.locator("#outcome")).to_contain_text("perturb_aborted")
            expect(report_page.locator("#parameters")).to_contain_text("20")  # the trials asked for

            # the checkpoint history: Evaluate one on a single sim episode and see its result
            report_page.goto(f"{base}/checkpoints")
            report_page.fill("#evaluate-form [name=episodes]", "1")
            report_page.locator("button[data-evaluate]").first.click()
            expect(report_page.locator("#evaluation-state")).to_contain_text("on 1 episode(s)", timeout=10_000)
            expect(report_page.locator("#evaluation-state")).to_contain_text("success", timeout=120_000)
            expect(report_page.locator("#history tbody tr td.evaluation").first).to_contain_text("(1 episodes", timeout=10_000)
            assert errors == [] and outside == [], (errors, outside)
        finally:
            browser.close()


def serve_page(html: str) -> http.server.ThreadingHTTPServer:
    """An HTTP server on a free loopback port that answers every GET with `html`, in a thread."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_page_on_another_port_cannot_pause_training_through_the_login_cookie(tmp_path):
    """Same-site CSRF: the operator is logged in; a page served from another port of the host
    submits a form to Pause. The browser sends the SameSite=Strict cookie with it (same site), so
    only the panel's Origin check stops it; the panel's own Pause button still works."""
    from playwright.sync_api import expect, sync_playwright

    require(shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)")
    run = RunDir.create(tmp_path / "run")
    learner_port, panel_port = free_port_block(3), free_port()
    (tmp_path / "learner.yaml").write_text(yaml.safe_dump({"env": "MultiGoal-v0", "checkpoint_every_s": 600}))
    learner = start([ROBOT_SQL, "learner", "--run-dir", str(run.root), "--config", str(tmp_path / "learner.yaml"),
                     "--port", str(learner_port)], tmp_path / "learner.out")
    panel = start([ROBOT_SQL, "panel", "--run-dir", str(run.root), "--port", str(panel_port),
                   "--learner-control", f"tcp://127.0.0.1:{learner_port + 2}"], tmp_path / "panel.out",
                  env={"ROBOT_SQL_PANEL_TOKEN": TOKEN, "ROBOT_SQL_PANEL_POLL_INTERVAL_S": "0.2"})
    base = f"http://127.0.0.1:{panel_port}"
    attacker = serve_page(f'<form method="post" action="{base}/api/training/pause"></form>'
                          "<script>document.forms[0].submit()</script>")
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    try:
        wait_healthy(base, panel, tmp_path / "panel.out")

        def learner_state() -> str | None:
            learner = api.get("/api/status").json()["learner"]
            return learner["status"]["state"] if learner["connected"] else None

        wait_for(lambda: learner_state() == "running", 60, "the learner to answer the panel")
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page()
                page.goto(f"{base}/?token={TOKEN}")
                expect(page.locator("#stream-state")).to_have_text("live", timeout=15_000)
                with page.expect_response(f"{base}/api/training/pause") as submitted:
                    page.goto(f"http://127.0.0.1:{attacker.server_port}/")
                assert submitted.value.status == 403  # not 401: the cookie went along
                expect(page.locator("body")).to_contain_text("cross-origin request refused")
                time.sleep(1.0)  # five status polls
                assert learner_state() == "running"

                page.goto(base)
                page.click("button[data-training=pause]")
                expect(page.locator("#message")).to_contain_text("/api/training/pause: ok", timeout=10_000)
                wait_for(lambda: learner_state() == "paused", 10, "the learner to report paused")
            finally:
                browser.close()
    finally:
        attacker.shutdown()
        api.close()
        stop(panel)
        stop(learner)
