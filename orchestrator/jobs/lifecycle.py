"""What the runner is asked, one request per lifecycle, and what a run gives back.

    NewRun     `consortium run`, `orchestrator.run`: a new MLflow run; its own round-end listeners
    Resume     `consortium resume`: continue a run from its last checkpoint, into the same MLflow run
    Trial      one trial of a sweep: a child run of the sweep's, reporting each epoch to Ray Tune;
               no figures, nothing registered
    Attach     a job submitted to Flower's deployment engine: `consortium run` opened the MLflow run
               and left it empty; the ServerApp's process records into it

A job kind hands the runner its `jobs.base.Outcome` (the trained torch model and what it measured,
inside this process); the runner hands its caller a `RunResult` (ids, metrics and URIs: plain data,
also what `orchestrator.run` returns and `consortium run --json` prints).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NewRun:
    listeners: tuple = ()            # a federated job's own round-end listeners


@dataclass(frozen=True)
class Resume:
    run_id: str


@dataclass(frozen=True)
class Trial:
    parent_tags: dict               # the tags that make it a child of the sweep's run
    params: dict                    # the trial's point in the search space, as run params
    on_epoch: Callable[[str, int, dict], None]   # (run_id, epoch, metrics) to Ray Tune


@dataclass(frozen=True)
class Attach:
    run_id: str


Request = NewRun | Resume | Trial | Attach


@dataclass
class RunResult:
    run_id: str
    experiment: str
    tracking_uri: str
    final: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # pooled metrics per round / epoch
    model_uri: str | None = None           # runs:/.../model
    registered: str | None = None          # models:/NAME/VERSION
    wall_s: float = 0.0
    experiment_id: str = ""
    first_round_at: float | None = None    # time.time() when the first round/epoch ended
    round_ends_s: list[float] = field(default_factory=list)  # federated: seconds from start, per round
    crossval: dict | None = None           # federated.crossval: {site: {model: {metric: value}}}
    previous_run: str | None = None        # the same job's run before this one ("": none; None: not looked up)

    def values(self, key: str) -> list[float]:
        """One metric's values in step order (e.g. to plot `eval/accuracy` per round)."""
        return [v for _, v in sorted(self.history.get(key, []))]
