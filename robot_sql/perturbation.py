"""Perturbation tests: the robustness experiment of the soft Q-learning paper, made routine.

A test runs evaluation episodes and, partway into each, pushes the arm: either a wrench on a
link for a short time (simulator), or a displacement of the joints to a perturbed
configuration (works on the real arm too: the robot moves there in position mode). Per trial
it records whether the task still succeeded, how long the arm took to recover and the
largest end-effector deviation. Reports are JSON files in the run directory's reports/.

Definitions (robot time, so the numbers mean the same in simulation and on the arm):
- deviation: distance of the end effector from where it was at the moment of the push,
  largest value between the push and recovery (or the end of the episode);
- recovered: the end effector's distance to the target is back to at most what it was at
  the push (or within the task's success tolerance, whichever is larger);
- time to recover: from the end of the push (wrench: after its duration; displacement: once
  the displaced configuration is reached) until recovered; None if it never recovered.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robot_sql import sawyer
from robot_sql.rundir import RunDir, atomic_write_bytes

# The strongest perturbations any caller (panel, CLI, actor command) may ask for. A hand
# push of 60 N is a firm shove for a 4 kg-payload arm; 0.5 rad (~29 deg) of joint-space
# displacement stays well inside what the position-mode move and the joint limits allow.
MAX_WRENCH_FORCE_N = 60.0
MAX_WRENCH_DURATION_S = 1.0
MAX_DISPLACEMENT_RAD = 0.5
# displacement targets keep this far from the joint limits
JOINT_LIMIT_MARGIN_RAD = 0.05


class PerturbationSpec(BaseModel):
    """What to do to the arm, how hard, and how many times."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["wrench", "displacement"]
    magnitude: float = Field(
        gt=0, description="wrench: force in N; displacement: norm of the joint-angle offset in rad"
    )
    trials: int = Field(3, ge=1, le=50)
    link: str = Field("right_l6", description="the link a wrench pushes")
    duration_s: float = Field(0.2, gt=0, le=MAX_WRENCH_DURATION_S, description="how long a wrench pushes")
    push_at_s: float = Field(1.0, ge=0, le=60, description="robot time into the episode when the push comes")
    seed: int = Field(0, ge=0, description="seeds the episodes and the push directions")

    @field_validator("link")
    @classmethod
    def _known_link(cls, link: str) -> str:
        if link not in sawyer.LINK_NAMES:
            raise ValueError(f"unknown link {link!r}; choose one of {list(sawyer.LINK_NAMES)}")
        return link

    @model_validator(mode="after")
    def _within_limits(self) -> "PerturbationSpec":
        limit, unit = (MAX_WRENCH_FORCE_N, "N") if self.kind == "wrench" else (MAX_DISPLACEMENT_RAD, "rad")
        if self.magnitude > limit:
            raise ValueError(f"{self.kind} magnitude {self.magnitude} {unit} exceeds the limit of {limit} {unit}")
        return self


class TrialResult(BaseModel):
    trial: int
    seed: int
    push_time_s: float  # robot time into the episode when the push came
    success: bool  # the task's success at the end of the episode
    recovered: bool
    time_to_recover_s: float | None
    max_deviation_m: float
    episode_return: float
    steps: int


class PerturbationReport(BaseModel):
    created: float
    env: str
    spec: PerturbationSpec
    trials: list[TrialResult]
    summary: dict[str, float | None]


def summarize(trials: list[TrialResult]) -> dict[str, float | None]:
    recoveries = [trial.time_to_recover_s for trial in trials if trial.time_to_recover_s is not None]
    return {
        "trials": len(trials),
        "success_rate": float(np.mean([trial.success for trial in trials])),
        "recovered_rate": float(np.mean([trial.recovered for trial in trials])),
        "mean_recovery_s": float(np.mean(recoveries)) if recoveries else None,
        "max_deviation_m": float(max(trial.max_deviation_m for trial in trials)),
        "mean_deviation_m": float(np.mean([trial.max_deviation_m for trial in trials])),
    }


def push(robot, spec: PerturbationSpec, rng: np.random.Generator) -> float:
    """Perturb the arm once in a random direction; returns the robot time at which the push ends."""
    if spec.kind == "wrench":
        direction = rng.normal(size=3)
        force = spec.magnitude * direction / np.linalg.norm(direction)
        robot.apply_wrench(spec.link, force, np.zeros(3), spec.duration_s)
        return robot.time + spec.duration_s
    direction = rng.normal(size=len(sawyer.JOINT_NAMES))
    current = robot.joint_positions()
    target = np.clip(current + spec.magnitude * direction / np.linalg.norm(direction),
                     sawyer.POSITION_LOWER + JOINT_LIMIT_MARGIN_RAD, sawyer.POSITION_UPPER - JOINT_LIMIT_MARGIN_RAD)
    robot.displace(target - current)  # the real arm gets there in position mode; the call returns once it has
    return robot.time


def run_trial(env, policy: Callable[[np.ndarray], np.ndarray], spec: PerturbationSpec, trial: int) -> TrialResult:
    """One evaluation episode with one push at `spec.push_at_s`, measured until the episode ends."""
    robot = env.unwrapped.robot
    seed = spec.seed + trial
    rng = np.random.default_rng(seed)
    observation, info = env.reset(seed=seed)
    start = robot.time
    episode_return, steps, done = 0.0, 0, False
    pushed_at = push_ends = recovered_at = None
    push_position = recover_within = None
    max_deviation = 0.0
    while not done:
        if pushed_at is None and robot.time - start >= spec.push_at_s:
            push_position = robot.ee_pose()[0]
            recover_within = max(distance_to_target(env, info), success_tolerance(env))
            pushed_at = robot.time
            push_ends = push(robot, spec, rng)
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        episode_return += float(reward)
        steps += 1
        done = terminated or truncated
        if pushed_at is not None and recovered_at is None:
            max_deviation = max(max_deviation, float(np.linalg.norm(robot.ee_pose()[0] - push_position)))
            if robot.time >= push_ends and distance_to_target(env, info) <= recover_within:
                recovered_at = robot.time
    if pushed_at is None:
        raise ValueError(f"the episode ended after {robot.time - start:.2f} s, before the push at {spec.push_at_s} s; "
                         "choose an earlier push_at_s")
    return TrialResult(
        trial=trial, seed=seed, push_time_s=pushed_at - start, success=bool(info.get("is_success", False)),
        recovered=recovered_at is not None,
        time_to_recover_s=None if recovered_at is None else recovered_at - push_ends,
        max_deviation_m=max_deviation, episode_return=episode_return, steps=steps,
    )


def run_trials(env, policy: Callable[[np.ndarray], np.ndarray], spec: PerturbationSpec,
               progress: Callable[[TrialResult], None] | None = None) -> PerturbationReport:
    """Run `spec.trials` perturbed evaluation episodes of `policy` (observation -> action) on `env`."""
    trials = []
    for trial in range(spec.trials):
        trials.append(run_trial(env, policy, spec, trial))
        if progress is not None:
            progress(trials[-1])
    return PerturbationReport(created=time.time(), env=env.spec.id if env.spec else type(env.unwrapped).__name__,
                              spec=spec, trials=trials, summary=summarize(trials))


def save_report(run: RunDir, report: PerturbationReport) -> Path:
    """reports/perturbation-<time>-<kind>.json (atomic); returns the path."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(report.created)) + f"-{int(report.created * 1e6) % 1_000_000:06d}"
    path = run.reports / f"perturbation-{stamp}-{report.spec.kind}.json"
    atomic_write_bytes(path, report.model_dump_json(indent=2).encode())
    return path
