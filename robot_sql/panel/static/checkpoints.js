// The learner's checkpoint history: download, evaluate in the simulator, see the result.
"use strict";

const $ = (selector) => document.querySelector(selector);
let polling = null;

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content;
  row.appendChild(td);
  return td;
}

function describeEvaluation(result) {
  if (!result) return "–";
  return `success ${Math.round(100 * result.success_rate)} %, mean return ${result.mean_return.toFixed(2)} ` +
         `(${result.episodes} episodes, seed ${result.seed})`;
}

function renderJob(job) {
  const box = $("#evaluation-state");
  box.className = job.state;
  if (job.state === "running") box.textContent = `evaluating ${job.checkpoint} on ${job.episodes} episode(s) of ${job.env}…`;
  else if (job.state === "done") box.textContent = `${job.checkpoint}: ${describeEvaluation(job.result)}`;
  else if (job.state === "failed") box.textContent = `evaluation of ${job.checkpoint} failed: ${job.error}`;
  else box.textContent = "";
  for (const button of document.querySelectorAll("button[data-evaluate]")) button.disabled = job.state === "running";
}

async function evaluate(name) {
  const form = new FormData($("#evaluate-form"));
  const body = { episodes: Number(form.get("episodes")), seed: Number(form.get("seed")) };
  const response = await fetch(`/api/checkpoints/history/${encodeURIComponent(name)}/evaluate`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const reply = await response.json();
  if (!response.ok) {
    const box = $("#evaluation-state");
    box.className = "failed";
    box.textContent = `refused (HTTP ${response.status}): ${JSON.stringify(reply.detail)}`;
    return;
  }
  renderJob(reply);
  refresh();
}

function render(data) {
  const body = $("#history tbody");
  body.innerHTML = "";
  for (const entry of data.checkpoints) {
    const row = document.createElement("tr");
    row.dataset.name = entry.name;
    cell(row, entry.name);
    cell(row, String(entry.updates));
    cell(row, new Date(entry.time * 1000).toLocaleString());
    cell(row, `${(entry.bytes / 1e6).toFixed(2)} MB`);
    cell(row, entry.env || "–");
    cell(row, describeEvaluation(entry.evaluation)).className = "evaluation";
    const actions = document.createElement("span");
    const link = document.createElement("a");
    link.href = `/api/checkpoints/history/${encodeURIComponent(entry.name)}`;
    link.textContent = "download";
    link.setAttribute("download", entry.name);
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.evaluate = entry.name;
    button.textContent = "Evaluate";
    button.addEventListener("click", () => evaluate(entry.name));
    actions.append(link, " ", button);
    cell(row, actions);
    body.appendChild(row);
  }
  if (!data.checkpoints.length) {
    const row = document.createElement("tr");
    cell(row, "none yet: the learner adds one at every checkpoint").colSpan = 7;
    body.appendChild(row);
  }
  $("#evaluate-form [name=episodes]").max = data.max_episodes;
  renderJob(data.evaluation);
}

async function refresh() {
  const response = await fetch("/api/checkpoints/history");
  if (response.ok) render(await response.json());
  clearTimeout(polling);
  polling = setTimeout(refresh, 2000);
}

refresh();
