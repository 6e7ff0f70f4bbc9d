"""How far a job is: rounds (federated), epochs (centralized, Ray Train), trials (sweep).

Kinds call `begin`, `step` and `end`; whoever started the job may `listen` (the command line: a
live display in a terminal, one plain line per step in a pipe, nothing with --quiet,
`orchestrator.console`). With no listener (the Python API, a sweep's trials) this costs nothing.
Steps may come from another thread (Flower's server runs in one).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from orchestrator.core.metrics import headline

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
