#!/usr/bin/env bash
# Build the colcon workspace ros_ws/ (intera_core_msgs + robot_sql_ros) into ros_ws/install
# with the ROS 2 pip wheels of the project venv (no /opt/ros needed).
#
#   scripts/build_ros_ws.sh           build (needs the /opt/python links below, or root)
#   scripts/build_ros_ws.sh --links   only create the /opt/python links (root; CI runs this)
#
# Why the links: the CMake configs inside the ROS wheels name the Python and numpy include
# folders of the machine the wheels were built on (/opt/python/cp311-cp311/...); those
# paths must exist and point at this interpreter's folders, which needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "build_ros_ws: no venv at $VENV (run 'make setup' first)" >&2; exit 1; }

tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
pyver=$("$PY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
root="${WHEEL_PYTHON_ROOT:-/opt/python}/$tag-$tag"  # the folder the wheels were built in (tests point it elsewhere)
python_include_link="$root/include/$pyver"
numpy_include_link="$root/lib/$pyver/site-packages/numpy/_core/include"
python_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
numpy_include=$("$PY" -c 'import numpy; print(numpy.get_include())')

links_ok() {
    [ "$(readlink -f "$python_include_link" 2>/dev/null)" = "$(readlink -f "$python_include")" ] &&
    [ "$(readlink -f "$numpy_include_link" 2>/dev/null)" = "$(readlink -f "$numpy_include")" ]
}

make_links() {
    mkdir -p "$(dirname "$python_include_link")" "$(dirname "$numpy_include_link")"
    ln -sfn "$python_include" "$python_include_link"
    ln -sfn "$numpy_include" "$numpy_include_link"
}

if [ "${1:-}" = "--links" ]; then
    links_ok || make_links
    exit 0
fi

if ! links_ok; then
    if [ "$(id -u)" = 0 ]; then
        make_links
    else
        cat >&2 <<MSG
build_ros_ws: the ROS 2 wheels' CMake files need these links, and creating them needs root:
    $python_include_link -> $python_include
    $numpy_include_link -> $numpy_include
Run once as root:  sudo scripts/build_ros_ws.sh --links   (then run this script again)
MSG
        exit 1
    fi
fi

venv_abs=$(cd "$VENV" && pwd)
export VIRTUAL_ENV="$venv_abs" PATH="$venv_abs/bin:$PATH"
export AMENT_PREFIX_PATH="$venv_abs" CMAKE_PREFIX_PATH="$venv_abs"
cd ros_ws
colcon build --install-base install --build-base build --event-handlers console_direct- \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$venv_abs/bin/python"
