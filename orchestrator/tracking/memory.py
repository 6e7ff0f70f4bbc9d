"""`tracking.enabled: false`: the run's metrics kept in memory only, MLflow never imported.

For dry runs and for measuring what tracking costs (bench/federated_overhead.py). The job's final
metrics are still printed; nothing is written, no plots are drawn, no model is logged.
"""
from __future__ import annotations

import uuid
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator.spec.errors import UserError
from orchestrator.tracking.protocol import MetricBuffer, done
from orchestrator.tracking.records import ModelRecord


class MemoryRun:
    """A run that keeps its metrics in this process, and nothing else."""

    tracked = False
    answers_here = True
    exports_here = True
    tracking_uri = "memory"
    experiment = "(not tracked)"
    experiment_id = "-"
    previous_run: str | None = None

    def __init__(self) -> None:
        self.run_id = f"untracked-{uuid.uuid4().hex[:12]}"
        self._buffer = MetricBuffer(sends=False)   # nowhere to send them: only the history is kept
        self._buffer.keep()

    @property
    def last(self) -> dict[str, float]:
        return self._buffer.last

    def keep_history(self) -> None:
        """Kept from the start: the memory is the record."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._buffer.add(metrics, step)

    def flush(self, wait: float = 0.0) -> bool:
        return True

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: dict, artifact_file: str) -> None: ...
    def log_figure(self, figure, artifact_file: str) -> None: ...
    def log_bytes(self, data: bytes, artifact_file: str) -> None: ...

    def tag(self, name: str) -> str | None:
        return None

    def metric_keys(self) -> list[str]:
        return self._buffer.keys()

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        return self._buffer.history(keys)

    def log_model(self, model, rows, registered_name: str | None, card: dict) -> ModelRecord:
        return ModelRecord(None)

    def log_model_later(self, model, rows, registered_name: str | None, card: dict) -> Future[ModelRecord]:
        return done(ModelRecord(None))

    def log_pickled_model(self, model, registered_name: str | None, metadata: dict) -> ModelRecord:
        return ModelRecord(None)


class MemoryTracker:
    uri = "memory (tracking.enabled: false)"

    @contextmanager
    def run(self, run_name: str, tags: dict[str, Any]) -> Iterator[MemoryRun]:
        yield MemoryRun()

    @contextmanager
    def reopen(self, run_id: str) -> Iterator[MemoryRun]:
        raise UserError("tracking.enabled", ["false: there is no recorded run to resume"])
        yield  # pragma: no cover

    def close(self) -> None:
        """Nothing to let go of."""


if TYPE_CHECKING:   # held to the declared protocols by the type checker (tests/unit/test_types.py)
    from orchestrator.tracking import protocol

    def _declared(run: MemoryRun, tracker: MemoryTracker) -> tuple[protocol.Run, protocol.Tracker]:
        return run, tracker
