"""The actor loop in-process on the MuJoCo Sawyer, driven over its real control channel (no learner; one
test with a real learner in this process, for what the actor reports)."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import zmq

import robot_sql  # noqa: F401  (registers the environments)
from robot_sql.actor import Actor, ActorLink
from robot_sql.perturbation import MAX_TRACE_LENGTH
from robot_sql.ports import free_port
from robot_sql.protocol import ControlClient, ControlError, encode
from robot_sql.service_settings import ActorSettings
from robot_sql.sql import Sampler
from tests.panel_support import run_token, wait_for
from tests.service_support import running_learner
from tests.sim_support import EpisodeEnds


def start_actor(run_dir: Path, env_id: str, **settings) -> tuple[Actor, threading.Thread, ControlClient]:
    control = f"tcp://127.0.0.1:{free_port()}"
    token = run_token(run_dir)
    values = {"learner": f"127.0.0.1:{free_port()}", "env": env_id, "name": "arm", "control_bind": control,
              "control_token_file": run_dir / "control.token", "control_rate_hz": 20.0, **settings}
    actor = Actor(gymnasium.make(env_id), ActorSettings(**values))
    thread = threading.Thread(target=actor.run, daemon=True)
    thread.start()
    return actor, thread, ControlClient(control, timeout_s=5.0, token=token)


def stop_actor(actor: Actor, thread: threading.Thread, client: ControlClient) -> None:
    client.close()
    actor.link.stopping.set()
    thread.join(10)
    assert not thread.is_alive()


def steps_in(client: ControlClient, seconds: float) -> int:
    before = client.call("status")["steps"]
    time.sleep(seconds)
    return client.call("status")["steps"] - before


def test_estop_holds_the_arm_until_rearm_and_commands_are_routed(tmp_path):
    actor, thread, client = start_actor(tmp_path / "run", "SawyerReach-v0")
    try:
        wait_for(lambda: client.call("status")["steps"] >= 5, 20, "the actor to step without a learner")
        status = client.call("status")
        assert status["connected"] is False
        # the arm's state for the panel: joints within limits, the target and the hand's error to it
        assert len(status["joint_positions"]) == 7 and len(status["target_position"]) == 3
        assert 0.0 <= status["position_error"] < 2.0
        assert client.call("estop") == {"estopped": True}
        status = client.call("status")
        assert status["estopped"] and status["holding"]
        assert steps_in(client, 0.5) == 0  # the policy no longer steps
        for token in ("", "wrong", client.token[:-1]):  # another local process cannot undo the e-stop, or move the arm
            with ControlClient(client.address, timeout_s=5.0, token=token) as intruder:
                for command, args in (("rearm", {}), ("reset_episode", {}), ("status", {}),
                                      ("perturb", {"kind": "wrench", "magnitude": 20.0})):
                    with pytest.raises(ControlError) as error:
                        intruder.call(command, **args)
                    assert error.value.kind == "unauthorized", command
        assert client.call("status")["holding"] and steps_in(client, 0.3) == 0
        assert client.call("rearm") == {"estopped": False}
        assert steps_in(client, 0.5) >= 5
        assert "episodes" in client.call("reset_episode")
        actor.request("estop")  # from inside the process, as the ROS node's e-stop topic does
        wait_for(lambda: client.call("status")["holding"], 5, "an in-process e-stop")
        actor.request("rearm")
        wait_for(lambda: not client.call("status")["holding"], 5, "an in-process rearm")
        with pytest.raises(ControlError) as error:  # routed to the perturbation module, which checks the spec
            client.call("perturb", kind="wrench", magnitude=1000.0)
        assert error.value.kind == "perturb_failed" and "exceeds the limit" in error.value.detail
        report = client.call("perturb", timeout_s=60, kind="wrench", magnitude=20.0, trials=1, push_at_s=0.2)
        assert len(report["trials"]) == 1 and report["spec"]["magnitude"] == 20.0
        trial = report["trials"][0]  # with its trace over time, for the report's page: bounded, the push inside it
        trace = trial["trace"]
        assert 10 < len(trace["time_s"]) == len(trace["deviation_m"]) == len(trace["error_m"]) <= MAX_TRACE_LENGTH
        assert trace["time_s"] == sorted(trace["time_s"]) and trace["time_s"][-1] <= trial["steps"] * 0.05 + 1e-6
        assert max(trace["deviation_m"]) == pytest.approx(trial["max_deviation_m"], abs=1e-5)
        assert trace["deviation_m"][0] == 0 and trace["push_end_s"] == pytest.approx(trial["push_time_s"] + 0.2, abs=0.06)
        # an e-stop during a test ends it, answered with its own error kind
        answers = []

        def long_test() -> None:
            with ControlClient(client.address, timeout_s=120, token=client.token) as tester:
                try:
                    answers.append(tester.call("perturb", kind="wrench", magnitude=20.0, trials=20, push_at_s=0.2))
                except ControlError as error:
                    answers.append(error)

        tester = threading.Thread(target=long_test)
        tester.start()
        wait_for(lambda: client.call("status")["perturbing"], 20, "the perturbation test to start")
        assert client.call("estop") == {"estopped": True}
        tester.join(30)
        assert isinstance(answers[0], ControlError) and answers[0].kind == "perturb_aborted", answers
        assert "aborted" in answers[0].detail and client.call("status")["holding"]
        assert client.call("rearm") == {"estopped": False}
        with pytest.raises(ControlError) as error:
            client.call("self_destruct")
        assert error.value.kind == "unknown_command"
        with ControlClient(client.address, timeout_s=5.0) as anyone:  # stopping the arm needs no credential
            assert anyone.call("estop") == {"estopped": True}
        status = client.call("status")
        assert status["holding"] and actor.link.session not in str(status)  # the session is never shown
    finally:
        stop_actor(actor, thread, client)
    # the last thing the actor did was hold(): with physics running on, the arm stays where it was
    robot = actor.env.unwrapped.robot
    before = robot.joint_positions()
    robot.advance(0.2)
    assert np.abs(robot.joint_positions() - before).max() < 0.01


def test_hold_on_link_loss_holds_until_a_learner_answers(tmp_path):
    actor, thread, client = start_actor(tmp_path / "run", "MultiGoal-v0", on_link_loss="hold")
    try:
        status = wait_for(lambda: (s := client.call("status"))["holding"] and s, 10, "the actor to hold")
        assert status["steps"] == 0 and status["connected"] is False
        assert steps_in(client, 0.3) == 0
    finally:
        stop_actor(actor, thread, client)


def test_unpaced_actor_runs_flat_out_and_stops_after_max_steps():
    settings = ActorSettings(learner=f"127.0.0.1:{free_port()}", env="MultiGoal-v0", control_bind="", paced=False,
                             control_rate_hz=10.0, max_steps=3000)
    actor = Actor(gymnasium.make("MultiGoal-v0"), settings)
    actor.request("reset_episode")  # no control channel: nobody to answer, and nothing breaks
    with pytest.raises(ValueError, match="unknown command"):
        actor.request("launch")
    started = time.monotonic()
    actor.run()  # returns by itself; at 10 Hz paced this would take 300 s (about 5 s here unloaded)
    assert actor.steps == 3000 and time.monotonic() - started < 150
    assert not actor.link.is_alive()


def test_settings_come_from_yaml_then_environment_then_flags(tmp_path, monkeypatch):
    from robot_sql.config import load_settings
    from robot_sql.service_settings import LearnerSettings

    config = tmp_path / "learner.yaml"
    config.write_text("utd_ratio: 0.5\nport: 6000\nsql: {reward_scale: 0.1}\n")
    monkeypatch.setenv("ROBOT_SQL_LEARNER_PORT", "7000")
    monkeypatch.setenv("ROBOT_SQL_ACTOR_ON_LINK_LOSS", "hold")
    learner = load_settings(LearnerSettings, config)
    assert (learner.utd_ratio, learner.port, learner.sql, learner.host) == (0.5, 7000, {"reward_scale": 0.1}, "127.0.0.1")
    assert load_settings(LearnerSettings, config, port=8000).port == 8000
    actor = load_settings(ActorSettings)
    assert actor.on_link_loss == "hold" and actor.control_bind.startswith("tcp://127.0.0.1:")


def test_every_published_weights_version_reaches_the_network_thread():
    """Versions published one at a time, each once the previous has arrived: none may be lost (with libzmq's
    CONFLATE option on the subscriber about one in 1500 was, and the actor then waited for the next)."""
    context = zmq.Context()
    publisher = context.socket(zmq.XPUB)
    publisher.setsockopt(zmq.XPUB_VERBOSE, 1)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    link = ActorLink(ActorSettings(learner=f"127.0.0.1:{port - 1}", control_bind=""), "arm", 23, 7, status=dict)
    link.start()
    try:
        assert publisher.poll(5000) and publisher.recv()[:1] == b"\x01", "the actor did not subscribe"
        weights = Sampler(23, 7, (128, 128)).weights()
        for version in range(1, 3001):
            publisher.send(encode("weights", "test", run="run", version=version, hidden_sizes=[128, 128],
                                  weights=weights))
            deadline = time.monotonic() + 2.0
            while link.new_policy is None or link.new_policy[1] != version:
                assert time.monotonic() < deadline, f"weights version {version} never reached the actor"
                time.sleep(0.0002)
    finally:
        link.stopping.set()
        link.join(10)
        context.destroy(linger=0)


def test_an_obstacle_task_actor_reports_each_episodes_collision_steps_to_the_learner(tmp_path):
    run_dir = tmp_path / "run"
    with running_learner(run_dir, env="SawyerAvoid-v0") as learner:
        env = EpisodeEnds(gymnasium.make("SawyerAvoid-v0"))  # 3 s episodes; many start touching the post
        actor = Actor(env, ActorSettings(learner=f"127.0.0.1:{learner.settings.port}", env="SawyerAvoid-v0",
                                         name="arm", control_bind="", paced=False, stats_every_s=60.0))
        thread = threading.Thread(target=actor.run, daemon=True)
        thread.start()

        def reported() -> list[float]:
            with sqlite3.connect(run_dir / "metrics.sqlite") as db:
                return [value for (value,) in db.execute(
                    "SELECT value FROM metrics WHERE source = 'arm' AND name = 'episode_collision_steps' ORDER BY rowid")]
        try:
            wait_for(lambda: len(reported()) >= 8, 120, "eight episodes' collision counts at the learner")
        finally:
            actor.link.stopping.set()
            thread.join(10)
    counted = [info["collision_steps"] for info in env.final_infos]
    assert any(counted), counted  # the check below compares real counts, not only zeros
    assert reported()[:8] == [float(steps) for steps in counted[:8]]
