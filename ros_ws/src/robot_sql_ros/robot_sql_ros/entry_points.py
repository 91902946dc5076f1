"""`ros2 run robot_sql_ros actor_node|sim_robot`: the same code as `robot-sql actor-node|sim-robot`.

ROS arguments (`--ros-args --params-file ... -r __node:=...`) pass through to rclpy.
"""
import sys


def actor_node() -> None:
    from robot_sql.ros_actor import run_node

    sys.exit(run_node(sys.argv))


def sim_robot() -> None:
    from robot_sql.sim.ros_driver import run_node

    sys.exit(run_node(sys.argv))
