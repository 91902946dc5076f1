"""The MuJoCo Sawyer stand-in (installed as robot_sql.sim): model, robot, envs and rendering."""
