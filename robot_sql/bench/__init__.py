"""`robot-sql bench ...`: speed and memory benchmarks that write JSON results."""
from robot_sql.cli import LazyGroup

import click

BENCHMARKS: dict[str, tuple[str, str]] = {
    "ros": ("robot_sql.bench.ros:bench_ros_command", "Actor node over ROS 2: joint-state-to-command latency, command rate and jitter."),
    "transport": ("robot_sql.bench.transport:bench_transport_command", "Learner ingest vs raw ZeroMQ, weight-push latency, replay memory."),
    "learner": ("robot_sql.bench.learner:bench_learner_command", "SQL updates/s, FLOPs per update and fraction of the matmul ceiling, vs SB3 SAC."),
    "learning": ("robot_sql.bench.learning:bench_learning_command", "Success rate against simulated robot minutes, SQL beside SB3 SAC, several seeds."),
    "sim": ("robot_sql.sim.bench:bench_sim_command", "Sawyer env steps/s and real-time factor on one core."),
}


@click.group(cls=LazyGroup, lazy_commands=BENCHMARKS)
def bench_group() -> None:
    """Benchmarks; each writes its results to a JSON file (--out)."""
