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
