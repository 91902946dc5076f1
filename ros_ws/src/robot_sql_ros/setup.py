from glob import glob

from setuptools import setup

package_name = "robot_sql_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="robot_sql maintainers",
    maintainer_email="robot-sql@example.com",
    description="robot_sql actor node and MuJoCo Sawyer driver entry points",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "actor_node = robot_sql_ros.entry_points:actor_node",
            "sim_robot = robot_sql_ros.entry_points:sim_robot",
        ],
    },
)
