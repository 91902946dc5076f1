"""The actor node on the physical Sawyer (Intera on ROS 1, reached through ros1_bridge).

    ros2 launch robot_sql_ros real.launch.py learner:=learner-host:5555
Run `robot-sql preflight` first; see deploy/robot/README.md.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration("params_file")
    learner = LaunchConfiguration("learner")
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("robot_sql_ros"), "config", "real_sawyer.yaml"]),
            description="ROS 2 parameter file with the robot_sql_actor section",
        ),
        DeclareLaunchArgument("learner", description="HOST:PORT of the learner"),
        Node(package="robot_sql_ros", executable="actor_node", name="robot_sql_actor", output="screen",
             parameters=[params_file, {"actor.learner": learner}]),
    ])
