"""The run directory: everything a run leaves behind, and where a restarted service finds its state.

    runs/<run-id>/
        config.yaml       resolved settings of the run
        learner.lock      held (flock) by the one learner serving the run; holds its pid
        control.token     credential of the learner's and the actors' control channels (mode 0600)
        panel.token       credential of the web panel (mode 0600)
        checkpoints/      atomic checkpoints (write to a temporary name, then rename)
        replay/           the durable replay store
        metrics.sqlite    metrics and events (WAL mode: several processes write, the panel reads)
        reports/          perturbation test reports (JSON)
        media/            rendered frames and episode videos
"""
from __future__ import annotations

import fcntl
import math
import os
import secrets
import stat
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from robot_sql.config import ConfigError


class RunDirLocked(RuntimeError):
    """Another live process holds the lock a process needs on the run directory."""


class TokenFileError(ConfigError):
    """A token file that cannot serve as a credential (unreadable, empty, readable by others)."""


def read_token(path: str | Path) -> str:
    """The token in `path`; a file that others may read is refused: the token is a credential."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"cannot read the token file {path}: {error}") from None
    if mode & 0o077:
        raise TokenFileError(f"{path} is readable by others (mode {mode:04o}); run: chmod 600 {path}")
    if not token:
        raise TokenFileError(f"{path} is empty; delete it to have a new token generated")
    return token


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def create(cls, root: str | Path) -> "RunDir":
        run = cls(Path(root))
        for folder in (run.root, run.checkpoints, run.replay, run.reports, run.media):
            folder.mkdir(parents=True, exist_ok=True)
        return run

    def lock(self, name: str) -> None:
        """Take runs/<id>/<name>.lock for the rest of this process's life (a second learner on one run
        would acknowledge and append the same batches). The kernel drops a flock when its holder dies,
        kill -9 included, so a stale file never blocks a restart. RunDirLocked names the holder's pid."""
        path = self.root / f"{name}.lock"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"  # empty only in the instant between its flock and write
            os.close(descriptor)
            raise RunDirLocked(f"another {name} (pid {holder}) is running on {self.root}; "
                               f"one {name} per run directory ({path})") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())  # the descriptor stays open: the lock is held

    def token(self, name: str) -> tuple[str, bool]:
        """The token in <run-dir>/<name>.token and whether it was made just now (then it may be shown once).

        Made if absent, mode 0600, in one step (a file linked into place): two processes starting
        together read the same token, never a half-written one."""
        path = self.root / f"{name}.token"
        if not path.exists():
            handle, temporary = tempfile.mkstemp(dir=self.root, prefix=f".{name}.token.")  # mode 0600
            try:
                with os.fdopen(handle, "w") as file:
                    file.write(secrets.token_urlsafe(32) + "\n")
                os.link(temporary, path)
                return read_token(path), True
            except FileExistsError:
                pass  # another process made it first: theirs is the token
            finally:
                os.unlink(temporary)
        return read_token(path), False

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def replay(self) -> Path:
        return self.root / "replay"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.sqlite"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def media(self) -> Path:
        return self.root / "media"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` so that `path` holds either the old or the new content, never a torn file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (time REAL NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL,
                                    step INTEGER NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_by_name ON metrics (name, time);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
                                   source TEXT NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
"""


class MetricsStore:
    """Metrics (name, step, value) and events (kind, message) of a run, in SQLite.

    Safe to share between threads of one process; several processes may open the same file.
    """

    def __init__(self, path: str | Path, read_only: bool = False):
        """`read_only`: open an existing store without writing to it (another run's, for the panel to
        compare with); sqlite3.OperationalError when there is none. With no writer (no -wal file beside
        it) it is opened immutable: even a read-only WAL connection would leave -wal and -shm files."""
        self.path = Path(path)
        self._lock = threading.Lock()
        if read_only:
            live = self.path.with_name(self.path.name + "-wal").exists()
            uri = f"{self.path.resolve().as_uri()}?mode=ro{'' if live else '&immutable=1'}"
            self._db = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False, isolation_level=None)
            return
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def log(self, source: str, step: int, values: dict[str, float]) -> None:
        now = time.time()
        # NaN would go in as NULL, which the schema refuses (a learner died of one): leave non-finite values out
        rows = [(now, source, name, int(step), float(value)) for name, value in values.items() if math.isfinite(value)]
        with self._lock:
            self._db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)

    def event(self, source: str, kind: str, message: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (time, source, kind, message) VALUES (?, ?, ?, ?)",
                (time.time(), source, kind, message),
            )

    def series(self, name: str, since: float = 0.0, limit: int = 10_000) -> list[tuple[float, int, float]]:
        """(time, step, value) of one metric after `since`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT time, step, value FROM metrics WHERE name = ? AND time > ? ORDER BY time DESC LIMIT ?",
                (name, since, limit),
            ).fetchall()
        return rows[::-1]

    def latest(self, names: Iterable[str]) -> dict[str, float]:
        out = {}
        with self._lock:
            for name in names:
                row = self._db.execute(
                    "SELECT value FROM metrics WHERE name = ? ORDER BY time DESC LIMIT 1", (name,)
                ).fetchone()
                if row is not None:
                    out[name] = row[0]
        return out

    def points(self, name: str, since: float = 0.0, limit: int = 10_000,
               source: str | None = None) -> list[tuple[float, int, float, str]]:
        """(time, step, value, source) of one metric after `since`, oldest first: the newest `limit`
        of them, of every source (the learner, each actor by its name) or of `source` only."""
        where, arguments = "name = ? AND time > ?", [name, since]
        if source is not None:
            where, arguments = where + " AND source = ?", arguments + [source]
        with self._lock:
            rows = self._db.execute(f"SELECT time, step, value, source FROM metrics WHERE {where} "
                                    "ORDER BY time DESC LIMIT ?", (*arguments, limit)).fetchall()
        return rows[::-1]

    def first_time(self, name: str) -> float | None:
        """When `name` was first logged (None: never)."""
        with self._lock:
            return self._db.execute("SELECT MIN(time) FROM metrics WHERE name = ?", (name,)).fetchone()[0]

    def names(self) -> list[str]:
        """Every metric name logged, sorted; one index lookup per name (not a scan of every row)."""
        with self._lock:
            return [row[0] for row in self._db.execute(
                "WITH RECURSIVE names(name) AS (SELECT MIN(name) FROM metrics UNION ALL "
                "SELECT (SELECT MIN(name) FROM metrics WHERE name > names.name) FROM names WHERE name IS NOT NULL) "
                "SELECT name FROM names WHERE name IS NOT NULL")]

    def events(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, float, str, str, str]]:
        """(id, time, source, kind, message) of events with id > after_id, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT id, time, source, kind, message FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
