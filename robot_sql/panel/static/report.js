// One perturbation report as a page: /reports/<id> shows reports/<id>.json.
"use strict";

const $ = (selector) => document.querySelector(selector);
const reportId = decodeURIComponent(location.pathname.split("/").pop()).replace(/\.json$/, "");

function formatValue(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  return String(v);
}

function fillTable(table, rows) {
  const body = table.querySelector("tbody");
  body.innerHTML = "";
  for (const [name, value, cls] of rows) {
    const row = document.createElement("tr");
    const key = document.createElement("th");
    key.textContent = name;
    const cell = document.createElement("td");
    cell.textContent = formatValue(value);
    if (cls) cell.className = cls;
    row.append(key, cell);
    body.appendChild(row);
  }
}

const percent = (rate) => (rate === null || rate === undefined ? "–" : `${Math.round(100 * rate)} %`);
const yesNo = (flag) => [flag ? "yes" : "no", flag ? "yes" : "no"];

function fact(text, cls) {
  const span = document.createElement("span");
  span.textContent = text;
  if (cls) span.className = cls;
  return span;
}

function renderTrial(trial) {
  const box = document.createElement("div");
  box.className = "trial";
  box.dataset.trial = trial.trial;
  const title = document.createElement("h3");
  title.textContent = `trial ${trial.trial} (seed ${trial.seed})`;
  const facts = document.createElement("div");
  facts.className = "facts";
  const [pushedText, pushedClass] = yesNo(trial.success);
  const [referenceText, referenceClass] = yesNo(trial.reference_success);
  facts.append(
    fact(`success pushed: ${pushedText}`, pushedClass),
    fact(`untouched: ${referenceText}`, referenceClass),
    fact(trial.recovered ? `recovered in ${formatValue(trial.time_to_recover_s)} s` : "never recovered",
         trial.recovered ? "yes" : "no"),
    fact(`max deviation ${formatValue(trial.max_deviation_m * 1000)} mm`),
    fact(`push at ${formatValue(trial.push_time_s)} s`),
    fact(`return ${formatValue(trial.episode_return)}, ${trial.steps} steps`));
  box.append(title, facts);
  const trace = trial.trace;
  if (!trace) {
    box.appendChild(fact("no trace in this report (written before traces were recorded)"));
    return box;
  }
  const plots = document.createElement("div");
  plots.className = "plots";
  const band = [trial.push_time_s, trace.push_end_s];
  plots.appendChild(linePlot({
    title: "deviation from the untouched run", xLabel: "time in episode (s)", yLabel: "mm", yScale: 1000,
    band, hline: trace.tolerance_m,
    series: [{ xs: trace.time_s, ys: trace.deviation_m, cls: "deviation", label: "pushed − untouched" }],
  }));
  if (trace.error_m && trace.reference_error_m) {
    plots.appendChild(linePlot({
      title: "distance from target", xLabel: "time in episode (s)", yLabel: "mm", yScale: 1000, band,
      hline: trace.tolerance_m,
      series: [{ xs: trace.time_s, ys: trace.reference_error_m, cls: "reference", label: "untouched" },
               { xs: trace.time_s, ys: trace.error_m, cls: "pushed", label: "pushed" }],
    }));
  }
  box.appendChild(plots);
  return box;
}

function render(report) {
  $("#report-name").textContent = reportId;
  document.title = `${reportId} · robot-sql`;
  const spec = report.spec || {};
  const outcome = report.outcome || "completed";
  const unit = spec.kind === "wrench" ? "N" : "rad";
  fillTable($("#parameters"), [
    ["outcome", outcome, outcome === "completed" ? "yes" : "no"],
    ["created", new Date(report.created * 1000).toLocaleString()],
    ["env", report.env || "–"],
    ["kind", spec.kind],
    ["magnitude", `${formatValue(spec.magnitude)} ${unit}`],
    ...(spec.kind === "wrench" ? [["link", spec.link], ["duration (s)", spec.duration_s]] : []),
    ["push at (s into the episode)", spec.push_at_s],
    ["trials asked for", spec.trials],
    ["first seed", spec.seed],
  ]);
  const box = $("#outcome");
  if (outcome !== "completed") {
    box.className = outcome;
    box.textContent = `${outcome.toUpperCase()}: ${report.reason || "no reason recorded"} — no trial results were kept`;
  }
  const s = report.summary || {};
  fillTable($("#summary"), [
    ["trials run", s.trials],
    ["success, pushed", percent(s.success_rate)],
    ["success, untouched", percent(s.reference_success_rate)],
    ["recovered", percent(s.recovered_rate)],
    ["mean recovery time (s)", s.mean_recovery_s === null ? "never" : s.mean_recovery_s],
    ["max deviation (mm)", s.max_deviation_m === undefined ? null : s.max_deviation_m * 1000],
    ["mean of the trials' max deviation (mm)", s.mean_deviation_m === undefined ? null : s.mean_deviation_m * 1000],
  ]);
  const trials = $("#trials");
  trials.innerHTML = "";
  for (const trial of report.trials || []) trials.appendChild(renderTrial(trial));
  if (!(report.trials || []).length) trials.textContent = "no trials";
}

async function load() {
  const response = await fetch(`/api/reports/${encodeURIComponent(reportId)}.json`);
  if (!response.ok) {
    $("#outcome").className = "error";
    $("#outcome").textContent = `cannot read the report: HTTP ${response.status}`;
    return;
  }
  render(await response.json());
}

load();
