"""`python -m robot_sql ...`: the `robot-sql` command without an installed entry point (e.g. on
a machine that has the dependencies but no pip access to install this package)."""
from robot_sql.cli import main

main(prog_name="robot-sql")
