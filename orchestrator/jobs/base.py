"""What the runner asks of a job kind, and the one Outcome every kind returns.

A kind is a module with a `KIND` object (registered in `orchestrator.spec.job.JOB_KINDS`):
  check(job, plan)      problems only this kind knows of, as a UserError (exit 2, nothing recorded)
  describe(job, plan)   the run's name, description, tags and extra params
  launch(job)           what must start before the run opens (a Ray runtime), as a `Launched`
  run(ctx)              train and evaluate into ctx.run; return an Outcome
The runner (`orchestrator.jobs.runner`) owns the rest of the lifecycle: the MLflow run, params, the
report, the logged and registered model, FINISHED / FAILED / KILLED.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from orchestrator.core.dataplan import DataPlan
    from orchestrator.jobs.transfer import Start
    from orchestrator.spec.job import JobSpec
    from orchestrator.tracking.protocol import Run, Tracker


@dataclass
class Outcome:
    model: torch.nn.Module | None                 # None: nothing to report or log (a sweep's parent)
    final: dict[str, float] = field(default_factory=dict)
    first_round_s: float | None = None            # seconds from training start to the first round/epoch's end
    first_round_at: float | None = None           # time.time() at that moment
    label_counts: np.ndarray | None = None        # federated: hospitals x classes, training rows
    confusion: np.ndarray | None = None           # federated: summed over hospitals' test rows, last round
    registered: str | None = None                 # a kind that registered a model itself (sweep's best)
    model_uri: str | None = None
    attributions: tuple | None = None             # federated, no central split: the hospitals' own (explain)
    crossval: dict | None = None                  # federated.crossval: {site: {model: {metric: value}}}


@dataclass
class Description:
    run_name: str
    text: str                                     # the run's description in the MLflow UI
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


class Launched:
    """What a kind started before the run opened. `join()` once MLflow is imported (a failure there
    is still a user error with nothing recorded); `stop()` always, at the end."""

    def join(self) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class Context:
    job: JobSpec
    plan: DataPlan
    run: Run
    tracker: Tracker
    launched: Launched
    start: Start | None = None                    # transfer learning: the source weights
    resume: bool = False
    on_epoch: Callable[[int, dict], None] | None = None   # sees every epoch's metrics (a sweep's trials)
    listeners: list = field(default_factory=list)   # federated: the job's own round-end listeners (jobs.federated.listeners)


class JobKind(ABC):
    """A kind describes and runs; checking and launching have defaults that do nothing."""

    name = "job"

    @property
    def logs_here(self) -> bool:
        """Every metric of a new run is logged from this process (`spec.job.LOGGED_HERE`): the run
        answers history reads (report, result) from memory, not with a query per key."""
        from orchestrator.spec.job import LOGGED_HERE

        return self.name in LOGGED_HERE

    def check(self, job: JobSpec, plan: DataPlan) -> None:
        pass

    @abstractmethod
    def describe(self, job: JobSpec, plan: DataPlan) -> Description: ...

    def launch(self, job: JobSpec) -> Launched:
        return Launched()

    @abstractmethod
    def run(self, ctx: Context) -> Outcome: ...
