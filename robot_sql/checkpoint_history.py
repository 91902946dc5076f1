"""The learner's checkpoint history, and evaluating one of its checkpoints in the simulator.

Besides checkpoints/learner.pt, which it resumes from, the learner keeps its last
`checkpoint_history` checkpoints (LearnerSettings) in checkpoints/history/, each file named by
its update count and time (learner-u000012000-20261124T132059Z.pt, the same bytes as learner.pt
was then) and listed in checkpoints/history/index.json (oldest first: name, updates, time,
bytes, env). A checkpoint at the update count of one already kept replaces it (a paused learner
checkpoints the same weights again). Order of writes: the file, then the index (both atomic),
then older files are deleted, so the index never names a missing or torn file; files the index
does not name (a crash between the writes) are deleted at the next checkpoint.

The panel lists the history, serves its files and evaluates one on demand:
`python -m robot_sql.checkpoint_history CHECKPOINT --env ENV --episodes N --out FILE.json`
runs robot_sql.train.evaluate on it (as `robot-sql eval` does for agent and policy checkpoints)
and writes the summary (success_rate, mean_return, ...) atomically to FILE.json.

No torch at import: the panel reads the index without it.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from robot_sql.rundir import atomic_write_bytes

HISTORY = "history"  # the folder under checkpoints/
INDEX = "index.json"
NAME = re.compile(r"learner-u\d{9,12}-\d{8}T\d{6}Z\.pt")


def history_folder(checkpoints: Path) -> Path:
    return Path(checkpoints) / HISTORY


def read_index(folder: Path) -> list[dict[str, Any]]:
    """The entries of `folder`'s index, oldest first, whose files exist; [] without a readable index."""
    try:
        entries = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict) and NAME.fullmatch(str(entry.get("name", "")))
            and (folder / entry["name"]).is_file()]


def record(checkpoints: Path, data: bytes, updates: int, keep: int, env: str, now: float | None = None) -> Path | None:
    """Keep `data` (a learner checkpoint at `updates`) in the history of at most `keep` entries.

    Returns the file written; None when keep is 0 (no history)."""
    if keep <= 0:
        return None
    folder = history_folder(checkpoints)
    folder.mkdir(exist_ok=True)
    now = time.time() if now is None else now
    name = f"learner-u{updates:09d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}.pt"
    atomic_write_bytes(folder / name, data)
    entries = [entry for entry in read_index(folder) if entry["updates"] != updates and entry["name"] != name]
    entries = (entries + [{"name": name, "updates": updates, "time": now, "bytes": len(data), "env": env}])[-keep:]
    atomic_write_bytes(folder / INDEX, json.dumps(entries, indent=1).encode())
    kept = {entry["name"] for entry in entries}
    for path in folder.iterdir():
        if NAME.fullmatch(path.name) and path.name not in kept:
            path.unlink(missing_ok=True)
    return folder / name


def evaluate_checkpoint(path: Path, env: str, episodes: int, seed: int) -> dict[str, Any]:
    """The stochastic policy of a learner, agent or policy checkpoint on `env`: robot_sql.train.evaluate's summary."""
    import torch

    from robot_sql.sql import load_policy
    from robot_sql.train import evaluate, resolve_env_id

    torch.set_num_threads(1)
    result = evaluate(load_policy(path), resolve_env_id(env), episodes, seed)
    return {key: value for key, value in result.items() if key != "trajectories"}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(prog="python -m robot_sql.checkpoint_history",
                                     description="Evaluate a checkpoint in the simulator; write the summary as JSON.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--env", required=True)
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.nice(10)  # the panel starts it beside the actors' control loops: they come first
    import robot_sql  # noqa: F401  (registers the environments)

    started = time.time()
    try:
        result = evaluate_checkpoint(args.checkpoint, args.env, args.episodes, args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        sys.exit(2)
    result.update(checkpoint=args.checkpoint.name, seed=args.seed, seconds=round(time.time() - started, 3),
                  finished=time.time())
    atomic_write_bytes(args.out, json.dumps(result, indent=2).encode())
    print(f"success_rate={result['success_rate']:.2f} mean_return={result['mean_return']:.2f} -> {args.out}")


if __name__ == "__main__":
    main()
