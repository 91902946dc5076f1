"""A real Learner in a thread of the test process, for tests that talk to it over real ZeroMQ."""
from __future__ import annotations

import contextlib
import threading

from robot_sql.learner import Learner
from robot_sql.ports import free_port_block
from robot_sql.rundir import RunDir
from robot_sql.service_settings import LearnerSettings


@contextlib.contextmanager
def running_learner(run_dir, **settings):
    """A learner on MultiGoal-v0 (rows of 8 floats) in a thread; no training unless min_replay is lowered."""
    values = {"port": free_port_block(3), "env": "MultiGoal-v0", "min_replay": 10 ** 9, "replay_capacity": 10_000,
              "log_every_s": 0.2, **settings}
    learner = Learner(RunDir.create(run_dir), LearnerSettings(**values))
    thread = threading.Thread(target=learner.run, daemon=True)
    thread.start()
    try:
        yield learner
    finally:
        learner.stop_requested.set()
        thread.join(30)
    assert not thread.is_alive()
