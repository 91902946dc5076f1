"""The panel's pages for reading results: one page per perturbation report, and the checkpoint history.

Routes (all behind the panel token, like the rest of the panel):
- GET /reports/{id}: the page of report reports/{id}.json (static/report.html; report.js draws
  each trial's deviation over time from /api/reports/{id}.json). Unknown id: 404.
- GET /checkpoints: the history page (static/checkpoints.html).
- GET /api/checkpoints/history: the learner's kept checkpoints, newest first, each with its
  update count, time, size, env and its last evaluation; and the evaluation job's state.
- GET /api/checkpoints/history/{name}: one checkpoint file, as a download. A name that is
  not a history file name is 422, one that is not kept (any more) 404: only the files the
  learner's index lists are ever served, so no path leads outside checkpoints/history/.
- POST /api/checkpoints/history/{name}/evaluate {"episodes": 1..200, "seed": 0..}: evaluates
  the checkpoint on `episodes` simulator episodes of the env it was trained on, in a
  subprocess (`python -m robot_sql.checkpoint_history`), one evaluation at a time (409 while
  one runs). 202; the result (success rate, mean return) is kept in
  <run-dir>/evaluations/<checkpoint>.json and shown by GET /api/evaluation and the history.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from robot_sql import checkpoint_history
from robot_sql.rundir import RunDir

STATIC = Path(__file__).parent / "static"
MAX_EVAL_EPISODES = 200
EVAL_TIMEOUT_S = 3600.0  # 200 Sawyer episodes take minutes on a busy machine; a hung one ends here
REPORT_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$"
CHECKPOINT_NAME = r"^learner-u\d{9,12}-\d{8}T\d{6}Z\.pt$"


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    episodes: int = Field(20, ge=1, le=MAX_EVAL_EPISODES)
    seed: int = Field(10_000, ge=0, le=2**31 - 1)


class Evaluations:
    """One evaluation subprocess at a time; its state for the page, its result on disk."""

    def __init__(self, run: RunDir):
        self.folder = run.root / "evaluations"
        self.lock = threading.Lock()
        self.job: dict[str, Any] = {"state": "idle"}

    def result_path(self, checkpoint: str) -> Path:
        return self.folder / f"{Path(checkpoint).stem}.json"

    def last_result(self, checkpoint: str) -> dict | None:
        try:
            return json.loads(self.result_path(checkpoint).read_text())
        except (OSError, ValueError):
            return None

    def start(self, path: Path, env: str, request: EvaluationRequest, record: Callable[[str], None]) -> dict:
        with self.lock:
            if self.job.get("state") == "running":
                raise HTTPException(409, f"an evaluation is already running ({self.job['checkpoint']}); "
                                         "one at a time")
            self.job = {"state": "running", "checkpoint": path.name, "env": env, "episodes": request.episodes,
                        "seed": request.seed, "started": time.time()}
            job = self.job
        self.folder.mkdir(exist_ok=True)
        out, log = self.result_path(path.name), self.folder / f"{path.stem}.log"
        command = [sys.executable, "-m", "robot_sql.checkpoint_history", str(path), "--env", env,
                   "--episodes", str(request.episodes), "--seed", str(request.seed), "--out", str(out)]

        def run() -> None:
            out.unlink(missing_ok=True)
            try:
                with open(log, "wb") as output:
                    process = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=EVAL_TIMEOUT_S)
                failure = None if process.returncode == 0 else f"exit status {process.returncode}"
            except (OSError, subprocess.TimeoutExpired) as error:
                failure = str(error)
            result = self.last_result(path.name) if failure is None else None
            if result is None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                job.update(state="failed", finished=time.time(),
                           error=f"{failure or 'no result written'}: {' '.join(tail)[-300:]}")
                record(f"evaluation of {path.name} failed: {job['error']}")
            else:
                job.update(state="done", finished=time.time(), result=result)
                record(f"evaluation of {path.name} on {request.episodes} episode(s) of {env}: success rate "
                       f"{result['success_rate']:.2f}, mean return {result['mean_return']:.2f}")

        threading.Thread(target=run, name="checkpoint-evaluation", daemon=True).start()
        record(f"evaluating {path.name} on {request.episodes} episode(s) of {env}")
        return dict(job)


def create_router(run: RunDir, require_token: Callable, record: Callable[[str, str], None] | None = None) -> APIRouter:
    """The routes above for `run`; `require_token` is the panel's check, `record(kind, message)` its event log."""
    from robot_sql.panel.app import FiniteJSONRoute  # here: app.py imports this module

    router = APIRouter(dependencies=[Depends(require_token)], route_class=FiniteJSONRoute)
    evaluations = Evaluations(run)
    history = checkpoint_history.history_folder(run.checkpoints)

    def note(message: str) -> None:
        if record is not None:
            record("evaluation", message)

    @router.get("/reports/{report_id}")
    def report_page(report_id: str = PathParameter(pattern=REPORT_ID)):
        name = report_id if report_id.endswith(".json") else f"{report_id}.json"
        if name not in {entry.name for entry in run.reports.iterdir()}:
            raise HTTPException(404, f"no report {report_id!r}")
        return FileResponse(STATIC / "report.html", headers={"Cache-Control": "no-store"})

    @router.get("/checkpoints")
    def checkpoints_page():
        return FileResponse(STATIC / "checkpoints.html", headers={"Cache-Control": "no-store"})

    def kept(name: str) -> dict:
        entry = next((entry for entry in checkpoint_history.read_index(history) if entry["name"] == name), None)
        if entry is None:
            raise HTTPException(404, f"no checkpoint {name!r} in the history (only the last ones are kept)")
        return entry

    @router.get("/api/checkpoints/history")
    def checkpoint_list() -> dict:
        entries = reversed(checkpoint_history.read_index(history))
        return {"checkpoints": [{**entry, "evaluation": evaluations.last_result(entry["name"])} for entry in entries],
                "evaluation": dict(evaluations.job), "max_episodes": MAX_EVAL_EPISODES}

    @router.get("/api/checkpoints/history/{name}")
    def checkpoint_file(name: str = PathParameter(pattern=CHECKPOINT_NAME)):
        kept(name)
        return FileResponse(history / name, media_type="application/octet-stream", filename=name)

    @router.post("/api/checkpoints/history/{name}/evaluate", status_code=202)
    def evaluate(body: EvaluationRequest, name: str = PathParameter(pattern=CHECKPOINT_NAME)) -> dict:
        entry = kept(name)
        env = str(entry.get("env") or "")
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,100}", env):
            raise HTTPException(409, f"the history does not say which env {name} was trained on")
        return evaluations.start(history / name, env, body, note)

    @router.get("/api/evaluation")
    def evaluation_state() -> dict:
        return dict(evaluations.job)

    return router
