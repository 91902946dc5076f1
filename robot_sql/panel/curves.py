"""The panel's curves beyond the live dashboard: every metric a run's store holds, per source,
and the same metrics of another run in the same runs folder to compare with.

    GET /api/runs                          the run directories under the runs root (this one marked)
    GET /api/metric-names[?run=NAME]       the metrics a run logged, with a title and who logs them
    GET /api/points/{metric}[?run=NAME&since=T&source=S&limit=N]
                                           {"points": [[time, step, value, source], ...], "first_time": ...}

A run is named by its directory's name under the runs root (the panel's --runs-root, default the
parent of its run directory): one path component of letters, digits, ".", "_" and "-", not
"." or "..", naming a directory there that holds a metrics.sqlite; anything else is 422. Another
run's store is opened read-only: the panel never writes to a run it only shows.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable

from fastapi import APIRouter, HTTPException, Path as PathParameter, Query

from robot_sql.protocol import STATS_NAMES
from robot_sql.rundir import MetricsStore, RunDir

RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_METRIC_NAME = 200
MAX_POINTS = 20_000  # per request; a page keeps at most 5000 per curve

# titles of the metrics the learner and the actors log (robot_sql/learner.py _log_metrics, robot_sql/sql.py
# update's metrics, the actors' STATS_NAMES); a name not here is shown as it is
TITLES = {
    "q_loss": "Q loss (soft Bellman residual, eq. 11)",
    "q_mean": "Mean Q(s, a) on the batch",
    "soft_value": "Soft value V(s') (eq. 10)",
    "q_grad_norm": "Q gradient norm",
    "kernel_bandwidth": "SVGD kernel bandwidth",
    "stein_norm": "Stein direction norm (eq. 13)",
    "sampler_grad_norm": "Sampler gradient norm",
    "updates": "SQL updates",
    "update_rate": "Update rate (updates/s)",
    "ingest_rate": "Ingest rate (transitions/s)",
    "transitions_total": "Transitions received",
    "replay_size": "Replay size",
    "weight_version": "Weight version",
    "skipped_updates": "Skipped (non-finite) updates",
    "actors_seen": "Actors heard from",
    "episode_return": "Episode return",
    "episode_length": "Episode length (steps)",
    "episode_success": "Success rate (last 20 episodes)",
    "episode_collision_steps": "Steps touching the obstacle, per episode",
    "actor_steps_per_s": "Actor control rate (steps/s)",
    "actor_loop_period_mean_ms": "Control-loop period, mean (ms)",
    "actor_loop_period_max_ms": "Control-loop period, max (ms)",
    "actor_unacked": "Actor: unacknowledged transitions",
    "actor_dropped": "Actor: dropped transitions",
    "actor_weight_version": "Actor: weight version in use",
}
# episode successes are 0/1: plotted as the running mean of the last 20, on a 0..1 axis
WINDOWS = {"episode_success": 20}
Y_RANGES = {"episode_success": (0.0, 1.0)}


def describe(name: str) -> dict[str, Any]:
    """How the page plots metric `name`: title, window (running mean), source kind (whose silence makes
    it stale: "actor" for the actors' stats, else "learner") and a fixed y range or None."""
    return {"name": name, "title": TITLES.get(name, name), "window": WINDOWS.get(name, 1),
            "source": "actor" if name in STATS_NAMES else "learner", "y_range": Y_RANGES.get(name)}


def catalog(names: Iterable[str]) -> list[dict[str, Any]]:
    return [describe(name) for name in sorted(set(names))]


class RunsRoot:
    """The folder of run directories the panel may read: its own run and the ones beside it."""

    def __init__(self, root: Path, current: RunDir):
        self.root = root.resolve()
        self.current = current
        self.current_name = current.root.resolve().name if current.root.resolve().parent == self.root else None

    def runs(self) -> list[dict[str, Any]]:
        """Run directories (those holding a metrics.sqlite), newest first."""
        found = []
        for entry in self.root.iterdir() if self.root.is_dir() else []:
            metrics = entry / "metrics.sqlite"
            if RUN_NAME.fullmatch(entry.name) and entry.resolve().parent == self.root and metrics.is_file():
                found.append({"name": entry.name, "modified": metrics.stat().st_mtime,
                              "current": entry.name == self.current_name})
        return sorted(found, key=lambda run: run["modified"], reverse=True)

    def path(self, name: str) -> Path:
        """The run directory called `name`; 422 for a name that is not one path component of the allowed
        characters or names no run directory directly under the root (symbolic links leading out included)."""
        if not RUN_NAME.fullmatch(name) or name in (".", ".."):
            raise HTTPException(422, f"bad run name {name!r}: one directory name under {self.root} "
                                     "(letters, digits, '.', '_', '-'; no '/', not '..')")
        path = (self.root / name).resolve()
        if path.parent != self.root or not path.is_dir() or not (path / "metrics.sqlite").is_file():
            raise HTTPException(422, f"no run directory {name!r} in {self.root} (a run directory holds metrics.sqlite)")
        return path


def curves_router(runs: RunsRoot, store: MetricsStore, dependencies: list) -> APIRouter:
    """The endpoints above; `store` is the panel's own run's, `dependencies` the token check."""
    router = APIRouter(dependencies=dependencies)

    def store_of(run: str | None) -> tuple[MetricsStore, Callable[[], None]]:
        """The metrics store of `run` (None or the panel's own: its open store) and how to close it."""
        if run is None or (runs.current_name is not None and run == runs.current_name):
            return store, lambda: None
        path = runs.path(run) / "metrics.sqlite"
        try:
            other = MetricsStore(path, read_only=True)
        except sqlite3.Error as error:
            raise HTTPException(422, f"cannot read the metrics of run {run!r}: {error}") from None
        return other, other.close

    run_query = Query(None, max_length=128, description="a run directory's name under the runs root (default: this run)")

    @router.get("/api/runs")
    def list_runs() -> dict:
        return {"root": str(runs.root), "current": runs.current_name, "runs": runs.runs()}

    @router.get("/api/metric-names")
    def metric_names(run: str | None = run_query) -> dict:
        source, close = store_of(run)
        try:
            names = source.names()
        except sqlite3.Error as error:
            raise HTTPException(422, f"cannot read the metrics of run {run!r}: {error}") from None
        finally:
            close()
        return {"run": run or runs.current_name, "metrics": catalog(names)}

    @router.get("/api/points/{metric}")
    def points(metric: str = PathParameter(max_length=MAX_METRIC_NAME), run: str | None = run_query,
               since: float = Query(0.0, allow_inf_nan=False),
               source: str | None = Query(None, max_length=128, description="one source only (the learner, an actor)"),
               limit: int = Query(5000, ge=1, le=MAX_POINTS)) -> dict:
        """The newest `limit` points of `metric` after `since`, every source's (or `source`'s), oldest
        first; first_time: when the run first logged it (for lining up two runs)."""
        store_, close = store_of(run)
        try:
            rows = store_.points(metric, since, limit, source)
            first = store_.first_time(metric)
        except sqlite3.Error as error:
            raise HTTPException(422, f"cannot read the metrics of run {run!r}: {error}") from None
        finally:
            close()
        return {"metric": metric, "run": run or runs.current_name, "first_time": first, "points": rows}

    return router
