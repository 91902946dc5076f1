// The panel page: one server-sent event stream feeds everything; buttons POST to /api/*.
// The login cookie (set by /?token=...) authenticates both.
"use strict";

const $ = (selector) => document.querySelector(selector);
const plots = {};
const marks = [];  // [time, label] of events drawn on every curve
let overview = null;
let launchedPid = null;  // a learner Start launched, until it answers

// events drawn as marks on the curves: "source kind" -> label (at a learner start the weight version
// jumps by up to 1000: a restarted learner continues after the block of versions reserved on disk)
const MARKS = {
  "learner start": "learner start", "learner pause": "pause", "learner resume": "resume",
  "learner stopped": "stopped", "panel estop": "e-stop", "panel rearm": "re-arm", "panel lost": "lost",
};

function showMessage(text, isError) {
  const box = $("#message");
  box.textContent = text;
  box.className = isError ? "error" : "";
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const reply = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof reply.detail === "string" ? reply.detail : JSON.stringify(reply.detail);
    throw new Error(`${path}: ${response.status} ${detail}`);
  }
  return reply;
}

function button(selector, path, body, done) {
  for (const element of document.querySelectorAll(selector)) {
    element.addEventListener("click", async () => {
      const target = typeof path === "function" ? path(element) : path;
      try {
        const reply = await post(target, body);
        showMessage(done ? done(reply) : `${target}: ok`, false);
      } catch (error) {
        showMessage(error.message, true);
      }
    });
  }
}

// ---- status: processes, arm, e-stop state ---------------------------------------------------

// rejected messages: the learner counts per socket and kind, the actor per kind of bad reply
function countAll(value) {
  if (typeof value === "number") return value;
  if (value && typeof value === "object") return Object.values(value).reduce((sum, item) => sum + countAll(item), 0);
  return 0;
}

function processState(status) {
  if (!status) return "–";
  if (status.estopped) return status.holding ? "E-STOPPED, holding" : "E-STOPPED";
  if (status.holding) return "holding";
  if (status.perturbing) return "perturbation test";
  return status.state || "running";
}

const DETAIL = {
  learner: ["updates", "weight_version", "replay_size", "update_rate", "device"],
  actor: ["weight_version", "steps", "episodes", "unacked_transitions", "dropped_transitions"],
};

function detail(kind, status, learnerSeen) {
  if (!status) return "";
  const parts = DETAIL[kind]
    .filter((key) => status[key] !== undefined && status[key] !== null)
    .map((key) => `${key}=${typeof status[key] === "number" ? formatNumber(status[key]) : status[key]}`);
  if (kind === "actor") {
    parts.unshift(`learner link: ${status.connected ? "up" : "DOWN"}`);
    const seen = learnerSeen[status.name];
    if (seen !== undefined) parts.push(`learner heard it ${formatNumber(seen)} s ago`);
  }
  return parts.join("  ");
}

function renderHealth(status) {
  // the learner's view of each actor: seconds since it last heard from it, by sender id
  const learnerSeen = {};
  const learnerActors = (status.learner && status.learner.status && status.learner.status.actors) || {};
  for (const info of Object.values(learnerActors)) learnerSeen[info.sender] = info.seconds_since_seen;
  const rows = (status.learner ? [["learner", status.learner]] : []).concat(status.actors.map((link) => ["actor", link]));
  const body = $("#health tbody");
  body.innerHTML = "";
  for (const [kind, link] of rows) {
    const row = document.createElement("tr");
    row.className = link.connected ? "" : "stale";
    const rejected = link.status ? countAll(kind === "learner" ? link.status.rejected : link.status.learner_errors) : "–";
    const cells = [
      `${link.name} (${link.address})`,
      link.connected ? "yes" : "no",
      link.reply_age_s === null ? "never" : `${link.reply_age_s.toFixed(1)} s`,
      link.connected || !link.status ? processState(link.status) : `stale, last known: ${processState(link.status)}`,
      rejected,
      link.error || detail(kind, link.status, learnerSeen),
    ];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 1) cell.className = link.connected ? "yes" : "no";
      row.appendChild(cell);
    });
    body.appendChild(row);
  }
  renderSafety(status.actors);
  renderArm(status.actors);
  renderTraining(status.training);
  renderStale(status);
}

// e-stopped (as any actor last reported): a banner across the page, which turns red
function renderSafety(actors) {
  const stopped = actors.filter((link) => link.status && link.status.estopped);
  const banner = $("#estop-banner");
  banner.hidden = !stopped.length;
  document.body.classList.toggle("estopped", stopped.length > 0);
  banner.querySelector("span").textContent = stopped
    .map((link) => `${link.name} holds the arm until re-armed${link.connected ? "" : " (last known: not answering)"}`)
    .join("; ");
  const badge = $("#arm-state");
  const connected = actors.filter((link) => link.connected && link.status);
  if (stopped.length) [badge.textContent, badge.className] = ["arm: E-STOPPED, holding", "badge bad"];
  else if (!connected.length) [badge.textContent, badge.className] = ["arm: no actor connected", "badge bad"];
  else [badge.textContent, badge.className] = ["arm: running", "badge ok"];
}

function renderArm(actors) {
  const arm = actors.find((link) => link.status);
  if (!arm) return;
  const status = arm.status;
  if (typeof status.position_error === "number") $("#ee-error").textContent = `end-effector error to target: ${(status.position_error * 100).toFixed(1)} cm`;
  if (Array.isArray(status.joint_positions)) renderJoints(status.joint_positions);
}

const TRAINING_BADGE = { running: "ok", paused: "warn", stopping: "warn", stopped: "warn", starting: "warn", "learner down": "bad" };

function renderTraining(training) {
  const badge = $("#training-state");
  badge.textContent = `training: ${training.state}`;
  badge.title = training.detail;
  badge.className = `badge ${TRAINING_BADGE[training.state] || ""}`;
  const start = $("button[data-training=start]");
  start.disabled = training.state === "starting";
  if (launchedPid === null) return;
  if (training.state === "starting") showMessage(`starting: ${training.detail} …`, false);
  else if (training.state === "learner down") showMessage(`the launched learner (pid ${launchedPid}) is not answering: ${training.detail}`, true);
  else showMessage(`learner pid ${launchedPid} answers: training ${training.state}`, false);
  if (training.state !== "starting") launchedPid = null;
}

// values whose source stopped answering are greyed and say so
function renderStale(status) {
  const down = {
    learner: status.learner && !status.learner.connected ? "learner not answering" : null,
    actor: status.actors.length && !status.actors.some((link) => link.connected) ? "no actor answering" : null,
  };
  for (const plot of Object.values(plots)) plot.setStale(down[plot.curve.source]);
  if (explorer.plot) explorer.plot.setStale(down[explorer.plot.curve.source]);
  $("#arm").classList.toggle("stale", Boolean(down.actor));
  $("#arm .stale-note").textContent = down.actor ? `(stale: ${down.actor}; last known values)` : "";
}

function renderJoints(positions) {
  const { names, lower, upper } = overview.joints;
  const box = $("#joints");
  box.innerHTML = "";
  positions.forEach((q, i) => {
    const fraction = Math.min(1, Math.max(0, (q - lower[i]) / (upper[i] - lower[i])));
    const nearLimit = fraction < 0.05 || fraction > 0.95;
    const row = document.createElement("div");
    row.className = "joint";
    row.innerHTML =
      `<span>${names[i]}</span>` +
      `<svg viewBox="0 0 100 10" preserveAspectRatio="none"><rect x="0" y="3" width="100" height="4" fill="#e3e3e3"/>` +
      `<rect x="${(100 * fraction - 1).toFixed(2)}" y="0" width="2" height="10" fill="${nearLimit ? "#d1242f" : "#1f6feb"}"/></svg>` +
      `<span>${q.toFixed(2)} rad</span>`;
    row.title = `limits ${lower[i]} .. ${upper[i]} rad`;
    box.appendChild(row);
  });
}

// ---- lists: reports, checkpoints, events -----------------------------------------------------

function renderReports(reports) {
  const body = $("#reports tbody");
  body.innerHTML = "";
  for (const report of reports) {
    const row = document.createElement("tr");
    const s = report.summary || {};
    const spec = report.spec || {};
    const percent = (rate) => `${Math.round(100 * rate)} %`;
    const cells = report.error
      ? [report.name, report.error, "", "", "", "", "", "", ""]
      : report.outcome !== "completed"
      ? [report.name, spec.kind, spec.magnitude, spec.trials, `${report.outcome}: ${report.reason}`, "–", "–", "–", "–"]
      : [report.name, spec.kind, spec.magnitude, s.trials, "completed",
         `${percent(s.success_rate)} / ${percent(s.reference_success_rate)}`, percent(s.recovered_rate),
         s.mean_recovery_s === null ? "never" : formatNumber(s.mean_recovery_s), formatNumber(s.max_deviation_m)];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    if (!report.error) {  // the report's own page: parameters, per-trial plots
      const link = document.createElement("a");
      link.href = `/reports/${encodeURIComponent(report.name.replace(/\.json$/, ""))}`;
      link.textContent = report.name;
      row.firstChild.replaceChildren(link);
    }
    row.addEventListener("click", async (event) => {
      if (event.target.closest("a")) return;  // the link opens the page
      const response = await fetch(`/api/reports/${encodeURIComponent(report.name)}`);
      const detail = $("#report-detail");
      detail.textContent = JSON.stringify(await response.json(), null, 2);
      detail.hidden = false;
    });
    body.appendChild(row);
  }
}

function renderPerturbation(job) {
  const box = $("#perturb-state");
  if (job.state === "running") box.textContent = `running a ${job.spec.kind} test on ${job.actor}…`;
  else if (job.state === "failed" || job.state === "aborted") box.textContent = `last test ${job.state}: ${job.error}`;
  else if (job.state === "done") box.textContent = `last test done: ${job.report}`;
  else box.textContent = "";
}

function renderCheckpoints(checkpoints) {
  const list = $("#checkpoints");
  list.innerHTML = "";
  for (const checkpoint of checkpoints) {
    const item = document.createElement("li");
    item.textContent = `${checkpoint.name}  ${(checkpoint.bytes / 1e6).toFixed(2)} MB  ${new Date(checkpoint.time * 1000).toLocaleString()}`;
    list.appendChild(item);
  }
  if (!checkpoints.length) list.innerHTML = "<li>none yet</li>";
}

function appendEvents(events) {
  const list = $("#events");
  for (const [id, time, source, kind, message] of events) {
    const item = document.createElement("li");
    item.dataset.id = id;
    item.textContent = `${new Date(time * 1000).toLocaleTimeString()} ${source} ${kind}: ${message}`;
    list.appendChild(item);
    const mark = MARKS[`${source} ${kind}`];
    if (mark) marks.push([time, mark]);
  }
  if (events.length) list.scrollTop = list.scrollHeight;
}

let frameRefresh = 0;
// where the arm view's camera looks from (degrees; the server's defaults and bounds from /api/overview)
const camera = { azimuth: 0, elevation: 0, view: "arm" };
// The arm as an actor reports it. The next picture is asked for only once this one has loaded or
// failed: a render that takes longer than the pause is never cancelled by the next request.
function refreshFrame() {
  const image = $("#frame");
  image.onload = () => { image.hidden = false; setTimeout(refreshFrame, 250); };
  image.onerror = () => { image.hidden = true; setTimeout(refreshFrame, 2000); };
  const view = `azimuth=${Math.round(camera.azimuth)}&elevation=${Math.round(camera.elevation)}&view=${camera.view}`;
  image.src = `/api/frame?${view}&n=${frameRefresh++}`;
}

// orbit the camera: the arrow buttons or a drag on the picture; the next picture uses it
function orbit(dAzimuth, dElevation) {
  const limits = overview.camera;
  // azimuth wraps around into [-180, 180]; elevation stops at its bounds
  camera.azimuth = ((camera.azimuth + dAzimuth + 540) % 360 + 360) % 360 - 180;
  camera.elevation = Math.min(limits.elevation_range[1], Math.max(limits.elevation_range[0], camera.elevation + dElevation));
  $("#camera-state").textContent = `azimuth ${Math.round(camera.azimuth)}°, elevation ${Math.round(camera.elevation)}°`;
}

function setUpCamera() {
  const reset = () => {
    Object.assign(camera, { azimuth: overview.camera.azimuth, elevation: overview.camera.elevation });
    orbit(0, 0);
  };
  reset();
  $("#camera-reset").addEventListener("click", reset);
  $("#camera [name=view]").addEventListener("change", (event) => { camera.view = event.target.value; });
  for (const element of document.querySelectorAll("[data-orbit]")) {
    const [dAzimuth, dElevation] = element.dataset.orbit.split(",").map(Number);
    element.addEventListener("click", () => orbit(dAzimuth, dElevation));
  }
  const image = $("#frame");
  let drag = null;
  image.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY };
    image.setPointerCapture(event.pointerId);
  });
  image.addEventListener("pointermove", (event) => {
    if (!drag) return;
    // half a degree per pixel: dragging right turns the scene right, dragging down looks from higher
    orbit(-(event.clientX - drag.x) / 2, -(event.clientY - drag.y) / 2);
    drag = { x: event.clientX, y: event.clientY };
  });
  const end = () => { drag = null; };
  image.addEventListener("pointerup", end);
  image.addEventListener("pointercancel", end);
}

// ---- curves: any metric, smoothing, x-axis, another run to compare with ----------------------------

// the explorer: one plot of any metric the run logged (names from the server), one line per source,
// optionally beside the same metric of another run in the runs folder; fed by polling /api/points
const explorer = { plot: null, metric: null, since: 0, firstTime: null, generation: 0, inflight: null, catalog: {} };
const EXPLORER_POLL_MS = 2000;

function allPlots() {
  return Object.values(plots).concat(explorer.plot ? [explorer.plot] : []);
}

async function getJSON(path) {
  const response = await fetch(path);
  const reply = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof reply.detail === "string" ? reply.detail : JSON.stringify(reply.detail);
    throw new Error(`${path}: ${response.status} ${detail}`);
  }
  return reply;
}

function fillSelect(select, options, keep) {
  const wanted = options.map(([value, label]) => `${value}\u0000${label}`).join("\u0001");
  if (select.dataset.options === wanted) return;
  select.dataset.options = wanted;
  select.innerHTML = "";
  for (const [value, label, disabled] of options) {
    const option = new Option(label, value, false, value === keep);
    option.disabled = Boolean(disabled);
    select.add(option);
  }
}

async function loadMetricNames() {
  const reply = await getJSON("/api/metric-names");
  for (const metric of reply.metrics) explorer.catalog[metric.name] = metric;
  const select = $("#metric-select");
  fillSelect(select, reply.metrics.map((metric) => [metric.name, `${metric.title} · ${metric.name}`]), explorer.metric);
  if (!explorer.metric && reply.metrics.length) {
    const names = reply.metrics.map((metric) => metric.name);
    await selectMetric(names.includes("q_mean") ? "q_mean" : names[0]);
  }
}

async function loadRuns() {
  const reply = await getJSON("/api/runs");
  const keep = $("#compare-run").value;
  fillSelect($("#compare-run"), [["", "none"]].concat(
    reply.runs.map((run) => [run.name, run.current ? `${run.name} (this run)` : run.name, run.current])), keep);
}

async function selectMetric(name) {
  explorer.generation += 1;
  explorer.metric = name;
  explorer.since = 0;
  explorer.firstTime = null;
  $("#metric-select").value = name;
  explorer.plot.reset(explorer.catalog[name] || { name, title: name, window: 1, source: "learner", y_range: null });
  await pollExplorer();
  await loadCompare();
}

async function pollExplorer() {
  const generation = explorer.generation;
  if (!explorer.metric || explorer.inflight === generation) return;
  explorer.inflight = generation;
  try {
    const reply = await getJSON(`/api/points/${encodeURIComponent(explorer.metric)}?since=${explorer.since}`);
    if (generation !== explorer.generation) return;  // another metric was chosen meanwhile
    explorer.firstTime = reply.first_time;
    if (reply.points.length) {
      explorer.since = reply.points[reply.points.length - 1][0];
      explorer.plot.extend(reply.points);
    }
  } catch (error) {
    showMessage(error.message, true);
  } finally {
    if (explorer.inflight === generation) explorer.inflight = null;
  }
}

async function loadCompare() {
  const run = $("#compare-run").value, generation = explorer.generation;
  if (!run || !explorer.metric) { explorer.plot.setCompare(null); return; }
  try {
    const reply = await getJSON(`/api/points/${encodeURIComponent(explorer.metric)}?run=${encodeURIComponent(run)}`);
    if (generation !== explorer.generation) return;
    // by wall time the other run is shifted so that both start together (each from its first point of the metric)
    const shift = explorer.firstTime !== null && reply.first_time !== null ? explorer.firstTime - reply.first_time : 0;
    explorer.plot.setCompare(run, reply.points, shift);
    if (!reply.points.length) showMessage(`run ${run} has no ${explorer.metric} points`, false);
  } catch (error) {
    showMessage(error.message, true);
  }
}

function setUpCurveControls() {
  explorer.plot = new LinePlot($("#explorer canvas"), { title: "no metric yet", window: 1, source: "learner", y_range: null }, marks);
  explorer.plot.draw();
  $("#metric-select").addEventListener("change", (event) => selectMetric(event.target.value));
  $("#compare-run").addEventListener("focus", () => loadRuns().catch((error) => showMessage(error.message, true)));
  $("#compare-run").addEventListener("change", loadCompare);
  $("#smoothing").addEventListener("input", (event) => {
    plotOptions.smoothing = Number(event.target.value);
    $("#smoothing-value").textContent = plotOptions.smoothing.toFixed(2);
    allPlots().forEach((plot) => plot.draw());
  });
  for (const radio of document.querySelectorAll("input[name=x-axis]")) {
    radio.addEventListener("change", (event) => {
      plotOptions.xAxis = event.target.value;
      allPlots().forEach((plot) => { plot.view = null; plot.draw(); });  // a zoom in the other unit means nothing now
    });
  }
  const refreshNames = () => loadMetricNames().catch((error) => showMessage(error.message, true));
  refreshNames();
  loadRuns().catch((error) => showMessage(error.message, true));
  setInterval(refreshNames, 5000);  // metrics appear as processes start logging them
  setInterval(pollExplorer, EXPLORER_POLL_MS);
}

// ---- the stream --------------------------------------------------------------------------------

// Each update's id says where the stream is; the browser's own reconnect sends it back (Last-Event-ID)
// and the panel continues from there. Only if the browser gives up (an error status) does this reconnect.
let streamCursor = "";
function connect() {
  const source = new EventSource(`/api/stream${streamCursor && "?resume=" + encodeURIComponent(streamCursor)}`);
  source.addEventListener("open", () => { $("#stream-state").textContent = "live"; $("#stream-state").className = "badge ok"; });
  source.addEventListener("error", () => {
    $("#stream-state").textContent = "reconnecting";
    $("#stream-state").className = "badge bad";
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  });
  source.addEventListener("update", (event) => {
    streamCursor = event.lastEventId;
    const update = JSON.parse(event.data);
    appendEvents(update.events);  // first: their marks go on the curves
    for (const [name, points] of Object.entries(update.series)) plots[name].extend(points);
    renderHealth(update.status);
    renderPerturbation(update.status.perturbation);
    renderReports(update.reports);
    renderCheckpoints(update.checkpoints);
  });
}

async function main() {
  const response = await fetch("/api/overview");
  if (!response.ok) {
    showMessage("not logged in: open the login link the panel printed at start (/?token=...)", true);
    return;
  }
  overview = await response.json();
  $("#run-dir").textContent = overview.run_dir;
  for (const [name, curve] of Object.entries(overview.curves)) {
    const canvas = document.createElement("canvas");
    canvas.dataset.curve = name;
    const box = document.createElement("div");
    box.className = "plot";
    box.appendChild(canvas);
    $("#plots").appendChild(box);
    plots[name] = new LinePlot(canvas, curve, marks);
    plots[name].draw();
  }
  for (const link of overview.links) $("#perturb-form [name=link]").add(new Option(link, link, link === "right_l6", link === "right_l6"));
  const magnitude = $("#perturb-form [name=magnitude]");
  const showKind = (kind) => {
    const wrench = kind === "wrench";
    $("#magnitude-unit").textContent = wrench ? `N (max ${overview.limits.wrench_force_n})` : `rad (max ${overview.limits.displacement_rad})`;
    magnitude.max = wrench ? overview.limits.wrench_force_n : overview.limits.displacement_rad;
    magnitude.value = wrench ? 20 : 0.2;
    $("#perturb-form [name=duration_s]").max = overview.limits.wrench_duration_s;
  };
  $("#perturb-form [name=kind]").addEventListener("change", (event) => showKind(event.target.value));
  showKind("wrench");

  button("#estop", "/api/estop", {}, () => "E-STOP sent: every actor holds the arm until re-armed");
  // re-arming lets the arm move: it takes a second, deliberate click in a dialog that says so
  $("#rearm").addEventListener("click", () => $("#rearm-dialog").showModal());
  button("#rearm-confirm", "/api/rearm", { confirm: true }, () => "re-armed: the arm moves again");
  button("[data-training]:not([data-training=start])", (element) => `/api/training/${element.dataset.training}`);
  button("button[data-training=start]", "/api/training/start", {}, (reply) => {
    if (!reply.started) return "resumed the learner";
    launchedPid = reply.pid;
    return `starting: launched learner pid ${reply.pid}, waiting for it to answer …`;
  });
  button("#reset-episode", "/api/episode/reset", {});
  $("#perturb-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const spec = { kind: form.get("kind"), magnitude: Number(form.get("magnitude")), trials: Number(form.get("trials")) };
    if (spec.kind === "wrench") Object.assign(spec, { link: form.get("link"), duration_s: Number(form.get("duration_s")) });
    try {
      const reply = await post("/api/perturbation", spec);
      showMessage(`perturbation test started on ${reply.actor} (${spec.trials} trials)`, false);
    } catch (error) {
      showMessage(error.message, true);
    }
  });
  window.addEventListener("resize", () => allPlots().forEach((plot) => plot.draw()));
  setUpCurveControls();
  connect();
  setUpCamera();
  refreshFrame();
}

main();
