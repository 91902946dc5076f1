"""Perturbation tests: the robustness experiment of the soft Q-learning paper, made routine.

A test runs evaluation episodes and, partway into each, pushes the arm: either a wrench on a
link for a short time (simulator), or a displacement of the joints to a perturbed
configuration (works on the real arm too: the robot moves there in position mode). Per trial
it records whether the task still succeeded, how long the arm took to recover and the
largest end-effector deviation. `run_trials` runs where the arm is (an actor, on its
`perturb` command); `save_report` keeps the report as JSON in the run directory's reports/
(the panel does, with the actor's answer).

Each trial runs its episode twice from the same seed: once untouched (the reference) and
once pushed. Measuring against the reference separates the push's effect from the policy's
own motion towards the target. Definitions, in robot time:
- deviation: distance between the pushed and the reference end-effector position at the
  same step (the reference's last position once its episode has ended); the report keeps
  the largest value after the push;
- recovered: the deviation is back within the task's position tolerance;
- time to recover: from the end of the push (wrench: after its duration; displacement: once
  the displaced configuration is reached) until recovered; None if it never did.
Each trial also keeps its trace (TrialTrace: the deviation, and both episodes' distance from the
target, over time), downsampled to at most MAX_TRACE_POINTS steps (plus the push, the largest
deviation and the recovery, kept exactly), so that a 50-trial report stays well under 1 MB.
The reference is exact for a deterministic policy, or a stochastic one that `reseed`
restarts; otherwise the deviation also holds the policy's own randomness. On the real arm
the two runs differ by sensor noise as well (millimetres).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import click
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from robot_sql import sawyer
from robot_sql.rundir import RunDir, atomic_write_bytes

# The strongest perturbations any caller (the panel, an actor's perturb command) may ask for. A hand
# push of 60 N is a firm shove for a 4 kg-payload arm; 0.5 rad (~29 deg) of joint-space
# displacement stays well inside what the position-mode move and the joint limits allow.
MAX_WRENCH_FORCE_N = 60.0
MAX_WRENCH_DURATION_S = 1.0
MAX_DISPLACEMENT_RAD = 0.5
# displacement targets keep this far from the joint limits
JOINT_LIMIT_MARGIN_RAD = 0.05
# steps kept per trial trace (evenly spaced over the episode), besides the few kept exactly
MAX_TRACE_POINTS = 300
MAX_TRACE_LENGTH = MAX_TRACE_POINTS + 4  # what a report may hold: the panel refuses longer traces


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
    push_at_s: float = Field(0.5, ge=0, le=60, description="robot time into the episode when the push comes")
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


class TrialTrace(BaseModel):
    """One trial over time, at the pushed episode's steps (robot time since its start, after the step).

    deviation_m: the pushed hand's distance from the reference's at the same step (0 before the push);
    error_m / reference_error_m: each episode's hand distance from the target at that step (the
    env's info["position_error"]; the reference's last value once its episode has ended); None
    where the env reports no position error."""

    model_config = ConfigDict(extra="forbid")

    time_s: list[float] = Field(max_length=MAX_TRACE_LENGTH)
    deviation_m: list[float] = Field(max_length=MAX_TRACE_LENGTH)
    error_m: list[float] | None = Field(None, max_length=MAX_TRACE_LENGTH)
    reference_error_m: list[float] | None = Field(None, max_length=MAX_TRACE_LENGTH)
    push_end_s: float  # when the push was over (the start is TrialResult.push_time_s)
    tolerance_m: float  # the task's position tolerance: within it the hand counts as recovered

    @model_validator(mode="after")
    def _same_length(self) -> "TrialTrace":
        lengths = {len(values) for values in (self.time_s, self.deviation_m, self.error_m, self.reference_error_m)
                   if values is not None}
        if len(lengths) != 1:
            raise ValueError(f"trace series of different lengths {sorted(lengths)}")
        return self


class TrialResult(BaseModel):
    trial: int
    seed: int
    push_time_s: float  # robot time into the episode when the push came
    success: bool  # the task's success at the end of the pushed episode
    reference_success: bool  # ... and of the untouched one
    recovered: bool
    time_to_recover_s: float | None
    max_deviation_m: float
    episode_return: float
    steps: int
    trace: TrialTrace | None = None  # reports written before traces existed have none


class PerturbationReport(BaseModel):
    created: float
    env: str
    spec: PerturbationSpec
    trials: list[TrialResult]
    summary: dict[str, float | None]
    # aborted: an e-stop ended it; failed: the actor refused it or stopped answering. Neither has trials.
    outcome: Literal["completed", "aborted", "failed"] = "completed"
    reason: str | None = None


def unfinished_report(spec: PerturbationSpec, outcome: Literal["aborted", "failed"], reason: str) -> dict[str, Any]:
    """The report of a test that ended without results, kept like any other so that it is not forgotten."""
    return PerturbationReport(created=time.time(), env="", spec=spec, trials=[], summary={},
                              outcome=outcome, reason=reason).model_dump(mode="json")


def summarize(trials: list[TrialResult]) -> dict[str, float | None]:
    recoveries = [trial.time_to_recover_s for trial in trials if trial.time_to_recover_s is not None]
    return {
        "trials": len(trials),
        "success_rate": float(np.mean([trial.success for trial in trials])),
        "reference_success_rate": float(np.mean([trial.reference_success for trial in trials])),
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


@dataclass
class Rollout:
    times: list[float] = field(default_factory=list)  # robot time since the episode start, after each step
    hand: list[np.ndarray] = field(default_factory=list)  # right_hand position after each step
    error: list[float] = field(default_factory=list)  # the hand's distance from the target after each step (NaN: unknown)
    success: bool = False
    episode_return: float = 0.0
    push_step: int | None = None  # steps taken before the push
    push_time: float | None = None  # robot time since the episode start when the push came ...
    push_ends: float | None = None  # ... and when it was over


class PerturbationAborted(RuntimeError):
    """`abort()` said stop (an e-stop came in): the arm was told to hold and the test ended."""


def rollout(env, policy, seed: int, spec: PerturbationSpec, pushed: bool, abort: Callable[[], bool] | None) -> Rollout:
    """One episode from `seed`; with `pushed`, one push at `spec.push_at_s` (its direction seeded by `seed`)."""
    robot = env.unwrapped.robot
    observation, info = env.reset(seed=seed)
    start = robot.time
    record, done = Rollout(), False
    while not done:
        if abort is not None and abort():
            robot.hold()
            raise PerturbationAborted(f"perturbation test aborted {robot.time - start:.2f} s into an episode")
        if pushed and record.push_step is None and robot.time - start >= spec.push_at_s:
            record.push_step, record.push_time = len(record.times), robot.time - start
            record.push_ends = push(robot, spec, np.random.default_rng(seed)) - start
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        record.times.append(robot.time - start)
        record.hand.append(robot.ee_pose()[0])
        record.error.append(float(info.get("position_error", np.nan)))
        record.episode_return += float(reward)
        done = terminated or truncated
    if pushed and record.push_step is None:
        raise ValueError(f"the episode ended after {robot.time - start:.2f} s, before the push at {spec.push_at_s} s; "
                         "choose an earlier push_at_s")
    record.success = bool(info.get("is_success", False))
    return record


def run_trial(env, policy: Callable[[np.ndarray], np.ndarray], spec: PerturbationSpec, trial: int,
              reseed: Callable[[int], None] | None = None, abort: Callable[[], bool] | None = None) -> TrialResult:
    """The reference and the pushed episode of one trial, compared step by step."""
    seed = spec.seed + trial
    runs = []
    for pushed in (False, True):
        if reseed is not None:
            reseed(seed)
        runs.append(rollout(env, policy, seed, spec, pushed, abort))
    reference, perturbed = runs
    tolerance = env.unwrapped.task.position_tolerance
    all_deviations = [float(np.linalg.norm(hand - reference.hand[min(step, len(reference.hand) - 1)]))
                      for step, hand in enumerate(perturbed.hand)]
    deviations = all_deviations[perturbed.push_step:]
    times = perturbed.times[perturbed.push_step:]
    recovered_at = next((t for t, deviation in zip(times, deviations)
                         if t >= perturbed.push_ends - 1e-9 and deviation <= tolerance), None)
    keep = [perturbed.push_step, perturbed.push_step + int(np.argmax(deviations))]
    if recovered_at is not None:
        keep.append(perturbed.times.index(recovered_at))
    trace = make_trace(perturbed, reference, all_deviations, keep, tolerance)
    return TrialResult(
        trial=trial, seed=seed, push_time_s=perturbed.push_time,
        success=perturbed.success, reference_success=reference.success, recovered=recovered_at is not None,
        time_to_recover_s=None if recovered_at is None else round(max(recovered_at - perturbed.push_ends, 0.0), 6),
        max_deviation_m=max(deviations), episode_return=perturbed.episode_return, steps=len(perturbed.times),
        trace=trace,
    )


def trace_steps(steps: int, keep: list[int], points: int = MAX_TRACE_POINTS) -> list[int]:
    """At most `points` steps of `steps` evenly spread (first and last included), plus those in `keep`."""
    spread = np.round(np.linspace(0, steps - 1, min(points, steps))).astype(int)
    return sorted({int(step) for step in spread} | {step for step in keep if 0 <= step < steps})


def make_trace(perturbed: Rollout, reference: Rollout, deviations: list[float], keep: list[int],
               tolerance: float) -> TrialTrace:
    steps = trace_steps(len(perturbed.times), keep)

    def errors(record: Rollout) -> list[float] | None:
        values = [record.error[min(step, len(record.error) - 1)] for step in steps]
        return None if any(np.isnan(values)) else [round(value, 5) for value in values]

    return TrialTrace(time_s=[round(perturbed.times[step], 4) for step in steps],
                      deviation_m=[round(deviations[step], 5) for step in steps],
                      error_m=errors(perturbed), reference_error_m=errors(reference),
                      push_end_s=round(perturbed.push_ends, 6), tolerance_m=tolerance)


def run_trials(env, policy: Callable[[np.ndarray], np.ndarray], spec: PerturbationSpec | dict[str, Any],
               reseed: Callable[[int], None] | None = None, abort: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run `spec.trials` perturbation trials of `policy` (observation -> action) on a pose-reaching `env`.

    `env` (robot_sql.sim.envs, or the real arm's env) has `unwrapped.robot` (robot_sql.robot.Robot)
    and `unwrapped.task.position_tolerance`, and reports `is_success` in its info. `reseed(seed)`,
    if given, restarts a stochastic policy's random numbers. `abort()`, checked before every
    step, ends the test with the arm holding (an actor passes "an e-stop is waiting": a test on
    the real arm takes minutes). Returns the report as plain data (PerturbationReport,
    JSON-ready), so an actor can send it over the wire as it is.
    """
    spec = PerturbationSpec.model_validate(spec)
    trials = [run_trial(env, policy, spec, trial, reseed, abort) for trial in range(spec.trials)]
    report = PerturbationReport(created=time.time(), env=env.spec.id if env.spec else type(env.unwrapped).__name__,
                                spec=spec, trials=trials, summary=summarize(trials))
    return report.model_dump(mode="json")


def save_report(run: RunDir, report: dict[str, Any]) -> Path:
    """Check `report` and write it as reports/perturbation-<time>-<kind>.json (atomic); returns the path."""
    checked = PerturbationReport.model_validate(report)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(checked.created)) + f"-{int(checked.created * 1e6) % 1_000_000:06d}"
    path = run.reports / f"perturbation-{stamp}-{checked.spec.kind}.json"
    atomic_write_bytes(path, checked.model_dump_json(indent=2).encode())
    return path


@click.command("perturb")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--env", "env_name", required=True, help="Sawyer pose env (e.g. sawyer-lego).")
@click.option("--kind", type=click.Choice(["wrench", "displacement"]), required=True)
@click.option("--magnitude", type=float, required=True, help="wrench: N; displacement: rad (joint-space norm).")
@click.option("--duration", "duration_s", type=float, default=0.2, show_default=True, help="How long a wrench pushes (s).")
@click.option("--push-at", "push_at_s", type=float, default=0.5, show_default=True, help="Robot time into the episode (s).")
@click.option("--link", default="right_l6", show_default=True, help="The link a wrench pushes.")
@click.option("--trials", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=1_000_000, show_default=True, help="Env seed of the first trial (held out).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON report.")
def perturb_command(checkpoint, env_name, kind, magnitude, duration_s, push_at_s, link, trials, seed, out):
    """Perturbation test of a trained policy on the simulated arm, as an actor runs it on its `perturb` command."""
    import gymnasium
    import torch

    from robot_sql.config import ConfigError
    from robot_sql.sql import load_policy
    from robot_sql.train import resolve_env_id

    torch.set_num_threads(1)
    try:
        spec = PerturbationSpec(kind=kind, magnitude=magnitude, duration_s=duration_s, push_at_s=push_at_s,
                                link=link, trials=trials, seed=seed)
        policy = load_policy(checkpoint)
    except ValueError as error:  # pydantic's ValidationError is one
        raise ConfigError(str(error)) from error
    generator = torch.Generator()
    report = run_trials(gymnasium.make(resolve_env_id(env_name)), lambda obs: policy.act(obs, generator=generator),
                        spec, reseed=generator.manual_seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, PerturbationReport.model_validate(report).model_dump_json(indent=2).encode())
    summary = report["summary"]
    click.echo(f"success {summary['success_rate']:.2f} (untouched {summary['reference_success_rate']:.2f}), "
               f"recovered {summary['recovered_rate']:.2f}, max deviation {summary['max_deviation_m'] * 1000:.0f} mm -> {out}")
