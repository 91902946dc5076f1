"""`robot-sql bench ...`: speed and memory benchmarks that write JSON results."""
from robot_sql.cli import LazyGroup

import click

BENCHMARKS: dict[str, tuple[str, str]] = {
}


@click.group(cls=LazyGroup, lazy_commands=BENCHMARKS)
def bench_group() -> None:
    """Benchmarks; each writes its results to a JSON file (--out)."""
