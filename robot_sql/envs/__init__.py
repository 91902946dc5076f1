"""gymnasium environments, registered when `robot_sql` is imported."""
import gymnasium

# id -> entry point; the Sawyer tasks live in sim/ (installed as robot_sql.sim)
ENVIRONMENTS: dict[str, dict] = {
    "MultiGoal-v0": {"entry_point": "robot_sql.envs.point_mass:MultiGoalEnv", "max_episode_steps": 30},
    "PointLineX-v0": {"entry_point": "robot_sql.envs.point_mass:LineXEnv", "max_episode_steps": 20},
    "PointLineY-v0": {"entry_point": "robot_sql.envs.point_mass:LineYEnv", "max_episode_steps": 20},
    "PointCorner-v0": {"entry_point": "robot_sql.envs.point_mass:CornerEnv", "max_episode_steps": 20},
    "PointRun-v0": {"entry_point": "robot_sql.envs.point_mass:RunEnv", "max_episode_steps": 30},
    "PointSingleGoal-v0": {"entry_point": "robot_sql.envs.point_mass:SingleGoalEnv", "max_episode_steps": 30},
    "SawyerReach-v0": {"entry_point": "robot_sql.sim.envs:SawyerReachEnv"},
    "SawyerReachNear-v0": {"entry_point": "robot_sql.sim.envs:SawyerReachNearEnv"},
    "SawyerLegoStack-v0": {"entry_point": "robot_sql.sim.envs:SawyerLegoStackEnv"},
    "SawyerPretrain-v0": {"entry_point": "robot_sql.sim.envs:SawyerPretrainEnv"},
    "SawyerStack-v0": {"entry_point": "robot_sql.sim.envs:SawyerStackEnv"},
    "SawyerAvoid-v0": {"entry_point": "robot_sql.sim.envs:SawyerAvoidEnv"},
    "SawyerStackAvoid-v0": {"entry_point": "robot_sql.sim.envs:SawyerStackAvoidEnv"},
}


def register_envs() -> None:
    for env_id, spec in ENVIRONMENTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **spec)
