"""ROS 2 entry points of robot_sql; the implementations live in the robot_sql Python package."""
