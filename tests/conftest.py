import os
import weakref

import pytest
import zmq

REQUIRE_ALL = os.environ.get("ROBOT_SQL_REQUIRE_ALL") == "1"
# headless rendering; set before any test module imports mujoco (which reads it on import)
os.environ.setdefault("MUJOCO_GL", "egl")


def require(condition: bool, reason: str) -> None:
    """Skip when an optional system part is missing; fail instead under ROBOT_SQL_REQUIRE_ALL=1 (CI)."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"ROBOT_SQL_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that fixtures can tell in teardown that it failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def failed(request) -> bool:
    """In a fixture's teardown: whether the test itself failed."""
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


# Every zmq context a test makes must be closed by the end of the test: an unclosed one is destroyed
# later by the garbage collector, during another test, and its term() can block there for good.
_contexts: "weakref.WeakSet[zmq.Context]" = weakref.WeakSet()
_context_init = zmq.Context.__init__


def _tracked_init(self, *args, **kwargs):
    _context_init(self, *args, **kwargs)
    _contexts.add(self)


zmq.Context.__init__ = _tracked_init


@pytest.fixture(autouse=True)
def no_zmq_context_left_open(request):
    before = set(_contexts)  # module and session fixtures are set up by now: theirs are theirs to close
    yield
    left = [c for c in _contexts if c not in before and not c.closed and c is not zmq.Context._instance]
    assert not left, f"{request.node.nodeid} left {len(left)} zmq context(s) open"
