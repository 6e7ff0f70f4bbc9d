"""`tracking.enabled: false`: the run's metrics kept in memory only, MLflow never imported.

For dry runs and for measuring what tracking costs (bench/tracking_overhead.py). The job's final
metrics are still printed; nothing is written, no plots are drawn, no model is logged.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from orchestrator.spec.errors import UserError


@dataclass
class NoModel:
    model_uri: str | None = None
    registry_uri: str | None = None


class MemoryRun:
    tracking_uri = "memory"
    experiment = "(not tracked)"
    experiment_id = "-"

    def __init__(self) -> None:
        self.run_id = f"untracked-{uuid.uuid4().hex[:12]}"
        self.last: dict[str, float] = {}
        self._history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.last[k] = float(v)
            self._history[k].append((step, float(v)))

    def flush(self, wait: float = 0.0) -> bool:
        return True

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: dict, artifact_file: str) -> None: ...
    def log_figure(self, figure, artifact_file: str) -> None: ...
    def log_bytes(self, data: bytes, artifact_file: str) -> None: ...

    def metric_keys(self) -> list[str]:
        return sorted(self._history)

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        return {k: list(self._history.get(k, [])) for k in keys}

    def log_model(self, model, rows, registered_name: str | None, card: dict) -> NoModel:
        return NoModel()


class MemoryTracker:
    uri = "memory (tracking.enabled: false)"

    @contextmanager
    def run(self, run_name: str, tags: dict[str, Any]) -> Iterator[MemoryRun]:
        yield MemoryRun()

    @contextmanager
    def reopen(self, run_id: str) -> Iterator[MemoryRun]:
        raise UserError("tracking.enabled", ["false: there is no recorded run to resume"])
        yield  # pragma: no cover
