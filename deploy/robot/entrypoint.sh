#!/usr/bin/env bash
# Humble and the colcon workspace on the paths, then the command (robot-sql actor-node, sim-robot, ros2 ...).
set -e
source /opt/ros/humble/setup.bash
source /app/ros_ws/install/setup.bash
exec "$@"
