"""How far a job is: rounds (federated), epochs (centralized, Ray Train), trials (sweep).

Kinds call `begin`, `step` and `end`; whoever started the job may `listen` (the command line: a
live display in a terminal, one plain line per step in a pipe, nothing with --quiet,
`orchestrator.console`). With no listener (the Python API, a sweep's trials) this costs nothing.
Steps may come from another thread (Flower's server runs in one).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

# The metrics a person looks at first, in order: what the summary leads with, what progress shows.
CLASSIFICATION = ("accuracy", "f1", "auroc")
REGRESSION = ("mse", "r2")
SCOPES = ("central", "eval", "site_mean", "val", "personal", "personal_site_mean")


def headline(metrics: dict[str, float], limit: int | None = None) -> list[str]:
    """The headline keys present in `metrics`: accuracy/F1/AUROC (or MSE/R²) on the server's held-out
    rows (`central/`), then over the hospitals' or the test rows (`eval/`), then validation."""
    names = CLASSIFICATION if any(k.endswith("/accuracy") for k in metrics) else REGRESSION
    keys = [f"{scope}/{name}" for scope in SCOPES for name in names if f"{scope}/{name}" in metrics]
    keys = [k for k in keys if not (isinstance(metrics[k], float) and math.isnan(metrics[k]))]
    return keys[:limit] if limit else keys


@dataclass
class Step:
    unit: str                     # round | epoch | trial
    done: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)   # the headline, latest values
    answered: int | None = None   # federated: hospitals that answered this round's evaluation
    failed: int | None = None     # federated: hospitals that failed this round's training
    note: str = ""                # e.g. a trial's settings


class Listener:
    def begin(self, unit: str, total: int, title: str) -> None: ...
    def step(self, step: Step) -> None: ...
    def end(self) -> None: ...


_listener: Listener | None = None
_lock = threading.Lock()


def listen(listener: Listener | None) -> None:
    global _listener
    _listener = listener


def listening() -> bool:
    return _listener is not None


def begin(unit: str, total: int, title: str = "") -> None:
    if _listener is not None:
        with _lock:
            _listener.begin(unit, total, title)


def step(unit: str, done: int, total: int, metrics: dict[str, float] | None = None, *,
         answered: int | None = None, failed: int | None = None, note: str = "") -> None:
    if _listener is not None:
        shown = {k: metrics[k] for k in headline(metrics or {}, 2)}
        with _lock:
            _listener.step(Step(unit, done, total, shown, answered, failed, note))


def end() -> None:
    if _listener is not None:
        with _lock:
            _listener.end()
