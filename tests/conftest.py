import os

import pytest

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

