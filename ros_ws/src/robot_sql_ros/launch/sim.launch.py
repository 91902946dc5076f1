"""Dry run without the arm: the MuJoCo Sawyer behind Intera's topics and the actor node driving it.

    ros2 launch robot_sql_ros sim.launch.py learner:=127.0.0.1:5555 control_token_file:=RUN_DIR/control.token
(the learner runs apart: `robot-sql learner --env SawyerReach-v0 --run-dir RUN_DIR`; it makes the token)
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration("params_file")
    learner = LaunchConfiguration("learner")
    token_file = LaunchConfiguration("control_token_file")
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("robot_sql_ros"), "config", "sim.yaml"]),
            description="ROS 2 parameter file with the sawyer_sim and robot_sql_actor sections",
        ),
        DeclareLaunchArgument("learner", default_value="127.0.0.1:5555", description="HOST:PORT of the learner"),
        DeclareLaunchArgument("control_token_file", description="the run's control.token (the panel's requests carry it)"),
        Node(package="robot_sql_ros", executable="sim_robot", name="sawyer_sim", output="screen",
             parameters=[params_file]),
        Node(package="robot_sql_ros", executable="actor_node", name="robot_sql_actor", output="screen",
             parameters=[params_file, {"actor.learner": learner, "actor.control_token_file": token_file}]),
    ])
