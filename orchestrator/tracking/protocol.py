"""What a job records into, declared: the tracked run and its tracker, as `typing.Protocol`s that a
type checker holds every implementation to (tests/unit/test_types.py runs mypy over the packages).

Implementations:
  tracking.store.TrackedRun / Tracker         MLflow in this process
  tracking.remote.RemoteRun / RemoteTracker   MLflow in the tracking process (`consortium run`)
  tracking.memory.MemoryRun / MemoryTracker   `tracking.enabled: false`: metrics in memory only
  jobs.ray.inbox.Outbox                       Ray Train's rank 0: a `Recorder`, metrics and tags only,
                                              which the driver's Inbox logs into the job's Run

Also here, shared by the implementations: the one metric buffer (`MetricBuffer`) and the one way a
run ends (`ending`). No MLflow import: a job that never tracks never pays for it.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from orchestrator.tracking.records import ModelRecord

Values = list[tuple[str, float, int, int]]   # (key, value, timestamp ms, step)


@runtime_checkable
class Recorder(Protocol):
    """What every sink of a job's metrics takes (Ray Train's rank 0 has no more than this)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...


@runtime_checkable
class Run(Recorder, Protocol):
    """One job's run. Metrics are buffered and sent on `flush()`; every other write is sent as it is
    made. Reads (`history`, `metric_keys`, `tag`) see what was flushed, or, once `keep_history()` was
    called on a new run, everything logged from this process."""

    @property
    def tracked(self) -> bool:
        """False: nothing outlives the job (tracking.enabled: false)."""
    @property
    def answers_here(self) -> bool:
        """History reads are answered from this process: no flush is needed before a report."""
    @property
    def exports_here(self) -> bool:
        """log_model runs in this process (False: elsewhere, so start it early with log_model_later)."""
    @property
    def last(self) -> dict[str, float]:
        """The latest value of every metric logged from this process."""
    @property
    def run_id(self) -> str: ...
    @property
    def experiment(self) -> str: ...
    @property
    def experiment_id(self) -> str: ...
    @property
    def tracking_uri(self) -> str: ...
    @property
    def previous_run(self) -> str | None:
        """The same job's run before this one ("": none; None: not looked up)."""

    def keep_history(self) -> None: ...
    def flush(self, wait: float = 0.0) -> bool: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: dict, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_bytes(self, data: bytes, artifact_file: str) -> None: ...
    def metric_keys(self) -> list[str]: ...
    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]: ...
    def tag(self, name: str) -> str | None: ...
    def log_model(self, model: Any, rows: Any, registered_name: str | None, card: dict) -> ModelRecord: ...
    def log_model_later(self, model: Any, rows: Any, registered_name: str | None,
                        card: dict) -> Future[ModelRecord]: ...
    def log_pickled_model(self, model: Any, registered_name: str | None, metadata: dict) -> ModelRecord: ...


class Tracker(Protocol):
    """Opens a job's run, and ends it as the job ends: FINISHED, FAILED on an error, KILLED on Ctrl-C
    or SIGTERM; what was logged stays either way."""

    @property
    def uri(self) -> str: ...
    def run(self, run_name: str, tags: dict[str, Any]) -> AbstractContextManager[Run]: ...
    def reopen(self, run_id: str) -> AbstractContextManager[Run]: ...
    def close(self) -> None: ...


@contextmanager
def ending(end: Callable[[str], None]) -> Iterator[None]:
    """The one way a run ends: `end(status)` with the status the block's way out gives."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        end(status)


def done(value: ModelRecord) -> Future[ModelRecord]:
    """A future that already holds its answer (a run that exports in this process)."""
    future: Future[ModelRecord] = Future()
    future.set_result(value)
    return future


class MetricBuffer:
    """Metric values waiting to be sent, the latest of each, and (once `keep()`) every value logged:
    thread-safe, since Flower's server and Ray's epoch inbox log from threads of their own."""

    def __init__(self, sends: bool = True) -> None:
        self.sends = sends   # False: nothing is sent anywhere (tracking off), only `last` and the history
        self.lock = threading.Lock()
        self.pending: Values = []
        self.last: dict[str, float] = {}
        self.kept: dict[str, list[tuple[int, float]]] | None = None

    def keep(self) -> None:
        self.kept = {}

    def add(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        with self.lock:
            for k, v in metrics.items():
                v = float(v)
                if self.sends:
                    self.pending.append((k, v, ts, step))
                self.last[k] = v
                if self.kept is not None:
                    self.kept.setdefault(k, []).append((step, v))

    def add_values(self, values: Values) -> None:
        """Values recorded elsewhere (the job's process, for the tracking process): sent, not kept."""
        with self.lock:
            self.pending.extend(values)
            for k, v, _, _ in values:
                self.last[k] = v

    def take(self) -> Values:
        with self.lock:
            pending, self.pending = self.pending, []
        return pending

    def put_back(self, values: Values) -> None:
        """Values that could not be sent go first again: order kept, nothing lost."""
        with self.lock:
            self.pending = values + self.pending

    def keys(self) -> list[str]:
        with self.lock:
            return sorted(self.kept or {})

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        with self.lock:
            kept = self.kept or {}
            return {k: list(kept.get(k, [])) for k in keys}
