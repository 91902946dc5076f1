"""robot_sql: soft Q-learning (Haarnoja et al. 2017) for a Rethink Sawyer arm.

Importing the package registers its gymnasium environments (lazily: nothing heavy is
imported until an environment is made).
"""
from robot_sql.envs import register_envs

__version__ = "0.1.0"

register_envs()
