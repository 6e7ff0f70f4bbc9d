"""`sweep:` kind sweep: Ray Tune runs the rest of the file as a `trial_kind` job once per trial."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec


class SweepSpec(Spec):
    """`space` maps dotted keys of the job to a list of values (grid: every combination; random:
    choice) or, for random search, to {low, high, log} ranges."""

    trial_kind: Literal["centralized", "federated", "local"] = Field("centralized", description=(
        "the kind each trial runs; federated trials run in this process (inline or vectorized engine) "
        "inside their Tune trial and report every round"))
    search: Literal["grid", "random"] = Field("grid", description="grid: lists of values | random: lists or ranges")
    space: dict[str, list | dict] = Field(default_factory=dict, description=(
        "dotted keys -> values, e.g. {train.optimizer.lr: [0.003, 0.03, 0.3]}"))
    num_samples: Annotated[int, Field(ge=1)] | None = Field(None, description="random: trials (4); grid: repeats (1)")
    metric: str = Field("eval/loss", description="what the best trial is chosen by")
    mode: Literal["min", "max"] = Field("min", description="min | max")
    scheduler: Literal["none", "asha"] = Field("none", description="none | asha (stops weak trials early)")
    grace_period: Annotated[int, Field(ge=1, description="asha: epochs before a trial may be stopped")] = 2
    max_concurrent: Annotated[int, Field(ge=1, description="trials at once")] = 2
    register_best: bool = Field(False, description="register the best trial's model as tracking.register_model")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for key, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{key}: an empty list of values")
            if isinstance(values, dict):
                if self.search != "random":
                    raise ValueError(f"space.{key}: a range needs search: random (grid takes a list of values)")
                if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
                    raise ValueError(f"space.{key}: a range is {{low, high, log}} (got {sorted(values)})")
                if not float(values["low"]) < float(values["high"]):
                    raise ValueError(f"space.{key}: low must be below high")
        return self
