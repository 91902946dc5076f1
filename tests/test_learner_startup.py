"""How `robot-sql learner` refuses to start: one learner per run directory, a taken port found
before the run is read, and one line (exit status 2, no traceback) for every bad setting.

Real processes, files and sockets; each refusal comes back in seconds.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from robot_sql.ports import free_port_block
from robot_sql.protocol import ControlClient, ControlError
from tests.panel_support import ROBOT_SQL, run_token, start, stop, wait_for


def clean_environment(**variables: str) -> dict[str, str]:
    """os.environ without the caller's own ROBOT_SQL_LEARNER_* settings, plus `variables`."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("ROBOT_SQL_LEARNER_")}
    return {**inherited, **variables}


def refuse(args: list[str], **variables: str) -> str:
    """Run `robot-sql ARGS`, expect status 2 and exactly one line of output; return it."""
    result = subprocess.run([ROBOT_SQL, *args], env=clean_environment(**variables), capture_output=True, text=True,
                            timeout=180)  # seconds on a quiet machine; a start takes longer under load
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    return output


def write_config(path: Path, port: int) -> Path:
    path.write_text(yaml.safe_dump({"port": port, "torch_threads": 1, "min_replay": 100}))
    return path


def learner_status(port: int, run: Path) -> dict | None:
    try:
        return ControlClient(f"tcp://127.0.0.1:{port + 2}", timeout_s=1.0, token=run_token(run)).call("status")
    except ControlError:
        return None


def test_a_second_learner_on_a_run_directory_is_refused_until_the_first_is_gone(tmp_path):
    run = tmp_path / "run"
    first_port, second_port = free_port_block(3), free_port_block(3)
    first_config = write_config(tmp_path / "first.yaml", first_port)
    second_config = write_config(tmp_path / "second.yaml", second_port)
    processes = [start([ROBOT_SQL, "learner", "--run-dir", str(run), "--config", str(first_config)],
                       tmp_path / "first.log", clean_environment())]
    try:
        wait_for(lambda: learner_status(first_port, run), 60, "the first learner")
        settings_written = (run / "learner.yaml").read_text()

        # other ports, same run: refused at once (it would otherwise append the same batches as the first)
        line = refuse(["learner", "--run-dir", str(run), "--config", str(second_config)])
        assert f"pid {processes[0].pid}" in line and str(run) in line, line
        assert (run / "learner.yaml").read_text() == settings_written  # the second one touched nothing
        assert learner_status(first_port, run) is not None

        os.killpg(processes[0].pid, signal.SIGKILL)  # the kernel releases the lock of a dead process
        processes[0].wait(10)
        processes.append(start([ROBOT_SQL, "learner", "--run-dir", str(run), "--config", str(second_config)],
                               tmp_path / "restarted.log", clean_environment()))
        wait_for(lambda: learner_status(second_port, run), 60, "the learner restarted after kill -9")
        assert (run / "learner.lock").read_text().strip() == str(processes[1].pid)
    finally:
        for process in processes:
            stop(process)


def test_a_taken_port_is_refused_before_the_run_is_read(tmp_path):
    port = free_port_block(3)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "learner.pt").write_bytes(b"not a checkpoint")  # reading it would end in a traceback
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        line = refuse(["learner", "--run-dir", str(run), "--port", str(port)])
    assert f"127.0.0.1:{port}" in line and "data socket" in line, line


def missing_gpu() -> str:
    """A CUDA device this machine lacks: plain cuda without a GPU, else one past the last GPU."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("variable, value, culprit", [
    ("ROBOT_SQL_LEARNER_SQL", "notjson", "sql"),
    ("ROBOT_SQL_LEARNER_DEVICE", "banana", "banana"),
    ("ROBOT_SQL_LEARNER_DEVICE", missing_gpu(), missing_gpu()),
    ("ROBOT_SQL_LEARNER_BATCH_SIZE", "-1", "ROBOT_SQL_LEARNER_BATCH_SIZE"),  # a setting of sql, not of the learner
    ("ROBOT_SQL_LEARNER_CHECKPOINT_EVERY_S", "inf", "checkpoint_every_s"),
    ("ROBOT_SQL_LEARNER_LOG_EVERY_S", "inf", "log_every_s"),
    ("ROBOT_SQL_LEARNER_CURVE_SECRET_KEY", "/nonexistent/learner.key_secret", "curve_secret_key"),
])
def test_a_bad_environment_setting_is_one_line_and_status_2(tmp_path, variable, value, culprit):
    run = tmp_path / "run"
    line = refuse(["learner", "--run-dir", str(run)], **{variable: value})
    assert culprit in line, line
    assert not run.exists()  # refused before the run directory is made


def test_a_bad_sql_setting_from_the_environment_is_one_line_and_status_2(tmp_path):
    # nested values arrive as strings: "-1" must be read as a number and then refused as one
    line = refuse(["learner", "--run-dir", str(tmp_path / "run"), "--port", str(free_port_block(3))],
                  ROBOT_SQL_LEARNER_SQL__BATCH_SIZE="-1")
    assert "batch_size must be >= 1" in line, line


def test_a_key_file_without_keys_is_one_line_and_status_2(tmp_path):
    (tmp_path / "learner.key_secret").write_text("not a key\n")
    line = refuse(["learner", "--run-dir", str(tmp_path / "run"), "--port", str(free_port_block(3))],
                  ROBOT_SQL_LEARNER_CURVE_SECRET_KEY=str(tmp_path / "learner.key_secret"))
    assert "curve_secret_key" in line and "learner.key_secret" in line, line


def test_an_actor_key_file_without_keys_is_one_line_and_status_2(tmp_path):
    for name in ("actor.key_secret", "learner.key"):
        (tmp_path / name).write_text("not a key\n")
    line = refuse(["actor", "--env", "MultiGoal-v0", "--control-bind", ""],
                  ROBOT_SQL_ACTOR_CURVE_SECRET_KEY=str(tmp_path / "actor.key_secret"),
                  ROBOT_SQL_ACTOR_CURVE_SERVER_KEY=str(tmp_path / "learner.key"))
    assert "curve_secret_key" in line and "actor.key_secret" in line, line


def test_an_unknown_variable_names_itself_and_the_settings(tmp_path):
    line = refuse(["learner", "--run-dir", str(tmp_path / "run")], ROBOT_SQL_LEARNER_BATCH_SIZE="-1")
    assert "CHECKPOINT_EVERY_S" in line and "UTD_RATIO" in line, line
    # the actor's prefix too, but not the ROS actor node's (ROBOT_SQL_ACTOR_NODE_), which begins like it
    line = refuse(["actor"], ROBOT_SQL_ACTOR_CONTROL_RATE="5", ROBOT_SQL_ACTOR_NODE_ACTOR__SEED="1")
    assert "ROBOT_SQL_ACTOR_CONTROL_RATE" in line and "CONTROL_RATE_HZ" in line and "NODE" not in line, line


@pytest.mark.parametrize("where", ["/proc/robot-sql-run", "/sys/robot-sql-run", "under a file"])
def test_a_run_directory_that_cannot_be_made_is_one_line_and_status_2(tmp_path, where):
    if where == "under a file":
        (tmp_path / "a-file").write_text("")
        where = str(tmp_path / "a-file" / "run")
    line = refuse(["learner", "--run-dir", where])
    assert f"cannot create the run directory {where}" in line, line


def test_a_control_token_file_others_can_read_is_one_line_and_status_2(tmp_path):
    token_file = tmp_path / "run" / "control.token"
    run_token(tmp_path / "run")
    token_file.chmod(0o644)
    line = refuse(["learner", "--run-dir", str(tmp_path / "run"), "--port", str(free_port_block(3))])
    assert "readable by others" in line and "chmod 600" in line, line
    line = refuse(["actor", "--control-token-file", str(token_file)])
    assert "readable by others" in line, line


def test_an_actor_control_channel_without_a_token_file_is_one_line_and_status_2(tmp_path):
    line = refuse(["actor", "--env", "MultiGoal-v0", "--control-bind", "tcp://127.0.0.1:9"])
    assert "control_token_file" in line and "control.token" in line and "control_bind: ''" in line, line
    line = refuse(["actor", "--env", "MultiGoal-v0", "--control-token-file", str(tmp_path / "missing.token")])
    assert "control_token_file" in line and "missing.token" in line, line


def test_control_without_the_runs_token_file_is_one_line_and_status_2(tmp_path):
    line = refuse(["control", "status", "--run-dir", str(tmp_path / "no-run")])
    assert "control.token" in line and "first start" in line, line


def composed_agent(tmp_path: Path) -> Path:
    """compose's agent.pt from two small untrained MultiGoal agents (their replay.npz beside them)."""
    from robot_sql.compose import compose
    from robot_sql.replay import ReplayBuffer
    from robot_sql.sql import SoftQLearning, SQLConfig

    checkpoints = []
    for seed in (1, 2):
        folder = tmp_path / f"constituent{seed}"
        folder.mkdir()
        SoftQLearning(SQLConfig(obs_dim=2, act_dim=2, hidden_sizes=(16, 16), batch_size=8, seed=seed)).save(folder / "agent.pt")
        replay = ReplayBuffer(2, 2, 100)
        for _ in range(20):
            replay.add(torch.rand(2).numpy(), torch.rand(2).numpy(), 0.0, torch.rand(2).numpy(), False)
        replay.save(folder / "replay.npz")
        checkpoints.append(folder / "agent.pt")
    compose(checkpoints, "MultiGoal-v0", tmp_path / "composed", mean=False, updates=3, seed=0, episodes=1, progress=False)
    return tmp_path / "composed" / "agent.pt"


def test_a_new_run_starts_from_a_composed_agent_and_a_resumed_run_ignores_init(tmp_path):
    from robot_sql.sql import load_checkpoint

    init = composed_agent(tmp_path)
    composed = load_checkpoint(init)
    assert tuple(composed["config"]["q_hidden_sizes"]) == (32, 32)  # the two constituents' Q side by side
    run, port = tmp_path / "run", free_port_block(3)
    config = write_config(tmp_path / "learner.yaml", port)
    process = start([ROBOT_SQL, "learner", "--run-dir", str(run), "--config", str(config), "--init", str(init)],
                    tmp_path / "learner.log", clean_environment())
    try:
        wait_for(lambda: learner_status(port, run), 60, "the learner started from the composed agent")
        ControlClient(f"tcp://127.0.0.1:{port + 2}", timeout_s=30.0, token=run_token(run)).call("checkpoint")
    finally:
        stop(process)
    started = load_checkpoint(run / "checkpoints" / "learner.pt")["agent"]
    assert tuple(started["config"]["q_hidden_sizes"]) == (32, 32)
    for network in ("q", "sampler"):  # no actor, no update: exactly the composed networks
        for name, value in composed[network].items():
            assert torch.equal(started[network][name], value), (network, name)

    # the run now has a checkpoint of its own: an init given on a restart is not used; and with one byte of
    # learner.pt flipped (torch itself would load it, a weight changed) it resumes from the history's copy
    other = tmp_path / "other.pt"
    other.write_bytes(b"not read")
    flip_middle_byte(run / "checkpoints" / "learner.pt")
    process = start([ROBOT_SQL, "learner", "--run-dir", str(run), "--config", str(config), "--init", str(other)],
                    tmp_path / "resumed.log", clean_environment())
    try:
        wait_for(lambda: learner_status(port, run), 60, "the resumed learner")
    finally:
        stop(process)
    log = (tmp_path / "resumed.log").read_text()
    assert "learner.pt is damaged" in log and "resuming from" in log and "history/learner-u" in log, log

    for kept in (run / "checkpoints").glob("**/learner*.pt"):  # nothing whole left: refused, not guessed
        flip_middle_byte(kept)
    result = subprocess.run([ROBOT_SQL, "learner", "--run-dir", str(run), "--config", str(config)],
                            env=clean_environment(), capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert "no checkpoint" in output.splitlines()[-1] and output.count("cannot be read") == 2, output  # one per file


def flip_middle_byte(path: Path) -> None:
    """Flip one byte in the middle of the checkpoint's largest tensor (torch's zip has padding that no
    reader looks at: a flip there changes nothing)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.compress_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, largest.header_offset + 26)  # the local header
    start = largest.header_offset + 30 + name_length + extra_length
    data[start + largest.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_init_checkpoint_that_is_not_an_agent_for_the_env_is_one_line_and_status_2(tmp_path):
    from robot_sql.sql import SoftQLearning, SQLConfig, save_policy

    agent = SoftQLearning(SQLConfig(obs_dim=2, act_dim=2, hidden_sizes=(8, 8)))
    save_policy(agent.sampler, tmp_path / "policy.pt")  # a policy alone: no Q-function to go on training
    SoftQLearning(SQLConfig(obs_dim=3, act_dim=2, hidden_sizes=(8, 8))).save(tmp_path / "wrong_dims.pt")
    agent.save(tmp_path / "damaged.pt")
    flip_middle_byte(tmp_path / "damaged.pt")
    for name, expected in (("policy.pt", "not an agent checkpoint"), ("wrong_dims.pt", "(3, 2)"),
                           ("damaged.pt", "CRC"), ("missing.pt", "init")):
        run = tmp_path / f"run-{name}"
        line = refuse(["learner", "--run-dir", str(run), "--port", str(free_port_block(3)), "--init", str(tmp_path / name)])
        assert expected in line and (name in line or name == "missing.pt"), line


def test_a_checkpoint_command_given_a_file_that_holds_no_agent_is_one_line_and_status_2(tmp_path):
    import torch

    torch.save(torch.zeros(3), tmp_path / "tensor.pt")  # a valid torch file, but no checkpoint of ours
    torch.save({"agent": 5}, tmp_path / "odd_learner.pt")  # a learner checkpoint's key, no agent under it
    for name, expected in (("tensor.pt", "holds a Tensor"), ("odd_learner.pt", "not an agent or policy checkpoint")):
        line = refuse(["eval", str(tmp_path / name), "--env", "multigoal", "--out", str(tmp_path / "eval")])
        assert expected in line and name in line, line
    line = refuse(["learner", "--run-dir", str(tmp_path / "run"), "--port", str(free_port_block(3)),
                   "--init", str(tmp_path / "tensor.pt")])
    assert "holds a Tensor" in line and "tensor.pt" in line, line
