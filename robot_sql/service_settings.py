"""Typed settings of the learner and actor services (YAML + environment variables).

Kept apart from learner.py and actor.py so that the panel and the ROS node can read them
without importing torch. Loopback binding is the default everywhere; CURVE keys are needed
as soon as a link leaves the machine.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import DirectoryPath, Field, FilePath, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from robot_sql.config import Settings


class LearnerSettings(Settings):
    """`robot-sql learner`: env prefix ROBOT_SQL_LEARNER_ (e.g. ROBOT_SQL_LEARNER_UTD_RATIO=0.5)."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_LEARNER_", env_nested_delimiter="__", extra="forbid")

    env: str = "MultiGoal-v0"  # gives the observation and action sizes
    host: str = "127.0.0.1"  # address the three sockets bind to
    port: int = Field(5555, ge=1, le=65533)  # data; weights on port + 1, control on port + 2
    device: str = "auto"  # cuda if available else cpu; or cpu, cuda, cuda:N
    torch_threads: int | None = Field(None, ge=1)  # CPU threads for updates; None = torch's default
    seed: int = 0
    sql: dict[str, Any] = {}  # SQLConfig fields other than obs_dim / act_dim, over the env's preset
    # agent checkpoint a new run starts from (robot-sql train's or compose's agent.pt); a run that has a
    # checkpoint of its own resumes from that and ignores this
    init: FilePath | None = None
    utd_ratio: float | None = Field(None, gt=0)  # SQL updates per transition received; None: the env's preset
    min_replay: int = Field(1000, ge=1)  # transitions stored before the first update
    replay_capacity: int = Field(1_000_000, ge=1)
    max_batch_transitions: int = Field(4096, ge=1)  # per transitions message
    max_frame_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # Limits (docs/service.md); a refused transitions frame is not acknowledged, so its actor keeps it and resends it.
    max_abs_value: float | None = Field(1e6, gt=0)  # on every value of a transition; None: finite is enough
    max_ingest_rate: float | None = Field(100_000, gt=0)  # transitions/s per actor session (a token bucket); None: no limit
    max_total_ingest_rate: float | None = Field(200_000, gt=0)  # transitions/s from all senders together
    max_replay_bytes: int | None = Field(20 * 1024 ** 3, gt=0)  # the replay log on disk; None: no limit
    publish_every: int = Field(20, ge=1)  # updates between weight versions
    checkpoint_every_s: float = Field(60.0, gt=0)
    checkpoint_history: int = Field(10, ge=0, le=1000)  # past checkpoints kept in checkpoints/history/ (0: none)
    log_every_s: float = Field(1.0, gt=0)
    max_updates: int | None = Field(None, ge=1)  # stop after this many updates (benchmarks, tests)
    curve_secret_key: FilePath | None = None  # the learner's .key_secret file: turns CURVE on
    curve_clients_dir: DirectoryPath | None = None  # public keys of allowed actors; None accepts any key holder

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        # whether torch sees that GPU is checked where torch is loaded (robot_sql.learner)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, not {device!r}")
        return device


class ActorSettings(Settings):
    """`robot-sql actor`: env prefix ROBOT_SQL_ACTOR_."""

    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_ACTOR_", env_nested_delimiter="__", extra="forbid")

    learner: str = "127.0.0.1:5555"  # HOST:PORT of the learner's data socket
    env: str = "MultiGoal-v0"
    name: str = ""  # sender id; default actor-<host>-<pid>
    control_rate_hz: float = Field(10.0, gt=0)
    paced: bool = True  # False: step as fast as possible (simulation training)
    on_link_loss: Literal["continue", "hold"] = "continue"  # run on the last weights, or hold the arm
    link_timeout_s: float = Field(2.0, gt=0)  # no reply from the learner this long = disconnected
    heartbeat_s: float = Field(0.5, gt=0)
    send_every_s: float = Field(0.05, gt=0)  # transitions are batched for at most this long
    max_batch_transitions: int = Field(256, ge=1)
    resend_after_s: float = Field(2.0, gt=0)  # resend a batch not acknowledged after this long
    max_unacked_transitions: int = Field(200_000, ge=1)  # beyond this the oldest are dropped (counted)
    stats_every_s: float = Field(1.0, gt=0)
    control_bind: str = "tcp://127.0.0.1:5560"  # the panel's channel to this actor ("" = none)
    control_token_file: Path | None = None  # the run's control.token, needed with control_bind (read at start)
    max_steps: int | None = Field(None, ge=1)  # stop after this many environment steps
    seed: int = 0
    curve_secret_key: FilePath | None = None  # the actor's .key_secret file (also secures its control channel)
    curve_server_key: FilePath | None = None  # the learner's public .key file
    curve_clients_dir: DirectoryPath | None = None  # public keys allowed on the control channel; None = any key holder

    @model_validator(mode="after")
    def _check(self) -> "ActorSettings":
        if (self.curve_secret_key is None) != (self.curve_server_key is None):
            raise ValueError("curve_secret_key and curve_server_key go together")
        self.learner_addresses()
        return self

    def learner_addresses(self) -> tuple[str, str]:
        """(data, weights) endpoints from HOST:PORT."""
        host, _, port = self.learner.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"learner must be HOST:PORT, got {self.learner!r}")
        return f"tcp://{host}:{int(port)}", f"tcp://{host}:{int(port) + 1}"
