"""scripts/build_ros_ws.sh: the /opt/python links the ROS 2 wheels' CMake files need (made in a
temporary folder here, never in the real /opt)."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build_ros_ws.sh"
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def run(tmp_path: Path, *args: str, fake_uid: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WHEEL_PYTHON_ROOT": str(tmp_path / "opt-python"), "VENV": str(Path(sys.prefix))}
    if fake_uid is not None:  # an `id` that reports another user, to take the not-root branch
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "id").write_text(f"#!/bin/sh\necho {fake_uid}\n")
        (bin_dir / "id").chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_links_mode_points_the_wheels_folders_at_this_interpreter(tmp_path):
    result = run(tmp_path, "--links")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "opt-python" / f"{TAG}-{TAG}"
    assert (root / "include" / PY).resolve() == Path(sysconfig.get_paths()["include"]).resolve()
    numpy_link = root / "lib" / PY / "site-packages" / "numpy" / "_core" / "include"
    assert numpy_link.resolve() == Path(numpy.get_include()).resolve()
    assert run(tmp_path, "--links").returncode == 0  # idempotent


def test_without_root_and_links_the_build_stops_with_the_fix(tmp_path):
    result = run(tmp_path, fake_uid=1000)
    assert result.returncode == 1
    assert "needs root" in result.stderr and "sudo scripts/build_ros_ws.sh --links" in result.stderr
    assert not (tmp_path / "opt-python").exists()
