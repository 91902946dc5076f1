"""The colcon workspace ros_ws/: messages field for field, the installed package, launch files
(checked statically: no launch wheels exist for this Python) and the parameter profiles."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from robot_sql.ros_env import INSTALL, WORKSPACE, private_domain
from tests.ros_support import require_ros

PACKAGE = WORKSPACE / "src" / "robot_sql_ros"
# names these launch files may use, all present in ROS 2 Humble's launch / launch_ros
HUMBLE_LAUNCH_API = {
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument"},
    "launch.substitutions": {"LaunchConfiguration", "PathJoinSubstitution"},
    "launch_ros.actions": {"Node"},
    "launch_ros.substitutions": {"FindPackageShare"},
}


def test_messages_match_intera_field_for_field():
    require_ros()
    from intera_core_msgs.msg import EndpointState, JointCommand, RobotAssemblyState

    assert JointCommand.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "mode": "int32", "names": "sequence<string>", "position": "sequence<double>",
        "velocity": "sequence<double>", "acceleration": "sequence<double>", "effort": "sequence<double>"}
    assert (JointCommand.POSITION_MODE, JointCommand.VELOCITY_MODE, JointCommand.TORQUE_MODE,
            JointCommand.TRAJECTORY_MODE) == (1, 2, 3, 4)
    assert EndpointState.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "pose": "geometry_msgs/Pose", "twist": "geometry_msgs/Twist",
        "wrench": "geometry_msgs/Wrench", "valid": "boolean"}
    assert RobotAssemblyState.get_fields_and_field_types() == {
        "homed": "boolean", "ready": "boolean", "enabled": "boolean", "stopped": "boolean", "error": "boolean",
        "low_voltage": "boolean", "estop_button": "uint8", "estop_source": "uint8"}
    assert (RobotAssemblyState.ESTOP_BUTTON_RELEASED, RobotAssemblyState.ESTOP_SOURCE_ENGINE) == (3, 4)


def test_installed_package_has_entry_points_launch_and_profiles():
    require_ros()
    share = INSTALL / "robot_sql_ros" / "share" / "robot_sql_ros"
    for executable in ("actor_node", "sim_robot"):
        assert (INSTALL / "robot_sql_ros" / "lib" / "robot_sql_ros" / executable).is_file()  # `ros2 run` looks here
    assert {p.name for p in (share / "launch").iterdir()} == {p.name for p in (PACKAGE / "launch").iterdir()}
    assert {p.name for p in (share / "config").iterdir()} == {"sim.yaml", "real_sawyer.yaml"}
    assert (INSTALL / "robot_sql_ros" / "share" / "ament_index" / "resource_index" / "packages" / "robot_sql_ros").is_file()


@pytest.mark.parametrize("launch_file", sorted((PACKAGE / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_file_is_valid_for_humble(launch_file: Path):
    tree = ast.parse(launch_file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module in HUMBLE_LAUNCH_API, f"{node.module} is not a launch module known here"
            assert {alias.name for alias in node.names} <= HUMBLE_LAUNCH_API[node.module]
        assert not isinstance(node, ast.Import), "plain imports are not expected in a launch file"
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions == ["generate_launch_description"]
    executables = set(re.findall(r'"(\w+) = robot_sql_ros\.', (PACKAGE / "setup.py").read_text()))
    profiles = {p.name for p in (PACKAGE / "config").glob("*.yaml")}
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        keywords = {k.arg: k.value for k in call.keywords}
        if getattr(call.func, "id", "") == "Node":
            assert keywords["package"].value == "robot_sql_ros"
            assert keywords["executable"].value in executables
            assert keywords["name"].value in {"sawyer_sim", "robot_sql_actor"}
            assert "parameters" in keywords
        if getattr(call.func, "id", "") == "PathJoinSubstitution":
            assert call.args[0].elts[-1].value in profiles


@pytest.mark.parametrize("profile", ["sim.yaml", "real_sawyer.yaml"])
def test_parameter_profiles_load_through_rclpy(profile):
    require_ros()
    import rclpy

    from robot_sql.ros_actor import NODE_NAME, ActorNodeSettings
    from robot_sql.ros_env import declare_settings
    from robot_sql.sim.ros_driver import SimRobotSettings

    context = rclpy.Context()
    path = str(PACKAGE / "config" / profile)
    rclpy.init(args=["test", "--ros-args", "--params-file", path], context=context, domain_id=private_domain())
    try:
        actor = declare_settings(rclpy.create_node(NODE_NAME, context=context), ActorNodeSettings)
        if profile == "real_sawyer.yaml":
            assert actor.speed_fraction <= 0.2 and actor.actor.on_link_loss == "hold"
            assert actor.actor.env == "SawyerLegoStack-v0"
        else:
            driver = declare_settings(rclpy.create_node("sawyer_sim", context=context), SimRobotSettings)
            assert driver.publish_rate_hz == 100.0 and actor.actor.env == "SawyerReach-v0"
        assert actor.actor.paced is False and actor.stale_after_s <= 2.0 / actor.actor.control_rate_hz
    finally:
        rclpy.try_shutdown(context=context)


def test_bad_parameter_file_is_a_clear_error(tmp_path):
    require_ros()
    import rclpy

    from robot_sql.config import ConfigError
    from robot_sql.ros_actor import NODE_NAME, ActorNodeSettings
    from robot_sql.ros_env import declare_settings

    bad = tmp_path / "bad.yaml"
    cases = {
        "workspace_low: [0, 0, 0]": "lists of decimals as floats",  # integers where doubles are declared
        "speed_fraction: 1.5": "speed_fraction",
        "actor:\n      paced: true": "paced must be false",
        "actor:\n      env: MultiGoal-v0": "must be a Sawyer pose task",
    }
    for line, message in cases.items():
        bad.write_text(f"{NODE_NAME}:\n  ros__parameters:\n    {line}\n")
        context = rclpy.Context()
        rclpy.init(args=["test", "--ros-args", "--params-file", str(bad)], context=context, domain_id=private_domain())
        try:
            with pytest.raises(ConfigError, match=message):
                declare_settings(rclpy.create_node(NODE_NAME, context=context), ActorNodeSettings)
        finally:
            rclpy.try_shutdown(context=context)
