"""Healthcheck of the `sim` container (docker-compose.yml): exit 0 once a /robot/joint_states
message arrives on this ROS domain, 1 if none comes within the timeout (seconds, argv[1], default 4).
Prints that message's joint names and positions as JSON (tests/test_docker_system.py reads them).

    python /app/deploy/ros_health.py 4
"""
import json
import sys
import time


def main() -> int:
    timeout_s = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    from robot_sql.ros_env import require_messages

    require_messages()
    import rclpy
    from sensor_msgs.msg import JointState

    rclpy.init()
    node = rclpy.create_node("robot_sql_healthcheck")
    received = []
    node.create_subscription(JointState, "/robot/joint_states", received.append, 10)
    deadline = time.monotonic() + timeout_s
    try:
        while not received and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if not received:
        print(f"no /robot/joint_states within {timeout_s} s", file=sys.stderr)
        return 1
    print(json.dumps({"name": list(received[0].name), "position": list(received[0].position)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
