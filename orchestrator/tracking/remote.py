"""The job's side of the tracking process (`tracking.sidecar`): a Tracker and a run that look like
`tracking.store`'s, without importing MLflow here.

Calls that only record (metrics, params, tags, artifacts, figures) are sent and not waited for;
calls that answer (the run's id, logging the model, reading metrics back, the end of the run) wait
for the answer. Metrics are buffered here and sent on flush(), as the in-process run does; a run
that keeps its history answers history reads from this process.

Used when MLflow is not imported yet in this process (`consortium run`); a process that already
has it (a notebook, the test suite) logs in-process. CONSORTIUM_TRACKING_PROCESS=1 or 0 forces it.
"""
from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator.tracking.link import Link
from orchestrator.tracking.protocol import MetricBuffer, ending
from orchestrator.tracking.records import ModelRecord
from orchestrator.tracking.stores import check_reachable, resolve_uri

ENV = "CONSORTIUM_TRACKING_PROCESS"


def wanted(job) -> bool:
    """The job logs from this process (`spec.job.LOGGED_HERE`) and MLflow is not imported here yet."""
    from orchestrator.spec.job import LOGGED_HERE

    if not (job.tracking.enabled and job.kind in LOGGED_HERE and job.model.init_from is None):
        return False   # init_from: the source model is read from MLflow here anyway
    choice = os.environ.get(ENV, "auto")
    return choice == "1" or (choice == "auto" and "mlflow" not in sys.modules)


_early: list = []


def start_early(job) -> None:
    """`consortium run`, before it reads the data: the tracking process starts importing MLflow."""
    if wanted(job):
        _early.append((job.tracking.uri, job.tracking.experiment, _tracker(job)))


def for_job(job):
    """The job's tracking process (the one started early, if it is for this job's store), or None."""
    while _early:
        uri, experiment, tracker = _early.pop()
        if (uri, experiment) == (job.tracking.uri, job.tracking.experiment):
            return tracker
        tracker.close()
    return _tracker(job) if wanted(job) else None


def _tracker(job) -> RemoteTracker:
    """A Ray Train job's tracking process runs at a lower priority: on a small machine Ray's start-up
    and its workers need the cores, and the tracking process has until the end of the fit (its
    timing, measured side by side in bench/ray_ddp.py: first epoch 0.2-0.8 s later, not 1.5 s).
    A federated job's tracking process is its critical path: normal priority."""
    return RemoteTracker(job.tracking.uri, job.tracking.experiment, nice=10 if job.kind == "ray" else 0)


class RemoteRun:
    """A run whose writes go to the tracking process (see the module doc)."""

    tracked = True
    exports_here = False   # the model is exported there: start it early (log_model_later)

    def __init__(self, link: Link, opened: Future):
        self._link, self._opened = link, opened
        self._buffer = MetricBuffer()

    # what MLflow gave the run; the first read waits for the store to be open
    run_id = property(lambda self: self._opened.result()[0])
    experiment_id = property(lambda self: self._opened.result()[1])
    experiment = property(lambda self: self._opened.result()[2])
    tracking_uri = property(lambda self: self._opened.result()[3])
    previous_run = property(lambda self: self._opened.result()[4])   # of the same job; "" for none

    @property
    def last(self) -> dict[str, float]:
        return self._buffer.last

    @property
    def answers_here(self) -> bool:
        """History reads are answered from this process: the report need not wait for the store."""
        return self._buffer.kept is not None

    def keep_history(self) -> None:
        """Every metric of this new run is logged from this process: history reads are answered here."""
        self._buffer.keep()

    def _check(self) -> None:
        """The store failed to open, or the tracking process died: say so at the next round, not
        after the whole job."""
        failure = self._opened.exception() if self._opened.done() else None
        if failure is not None:
            raise failure
        if self._link.gone:
            from orchestrator.tracking.link import TrackingLost

            raise TrackingLost(self._link.gone)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._check()
        self._buffer.add(metrics, step)

    def flush(self, wait: float = 0.0) -> bool:
        pending = self._buffer.take()
        if pending:
            self._link.send("values", pending)
        if wait > 0:
            return self._link.call("call", "flush", (wait,), {})
        self._link.send("call", "flush", (), {})
        return True

    def _record(self, method: str, *args) -> None:
        self._link.send("call", method, args, {})

    def log_params(self, params: dict[str, Any]) -> None:
        self._record("log_params", dict(params))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._record("set_tags", {k: str(v) for k, v in tags.items()})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._record("log_text", text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._record("log_dict", data, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        self._record("log_bytes", data, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """Drawn here, as MLflow's log_figure draws it (savefig in the file's format): this process
        waits for the tracking process at the end of a job, so the drawing is better done here."""
        import io

        buf = io.BytesIO()
        figure.savefig(buf, format=Path(artifact_file).suffix.lstrip(".") or "png")
        self.log_bytes(buf.getvalue(), artifact_file)

    def metric_keys(self) -> list[str]:
        if self._buffer.kept is not None:
            return self._buffer.keys()
        self.flush()
        return self._link.call("call", "metric_keys", (), {})

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        if self._buffer.kept is not None:
            return self._buffer.history(keys)
        self.flush()
        return self._link.call("call", "history", (keys,), {})

    def tag(self, name: str) -> str | None:
        return self._link.call("call", "tag", (name,), {})

    def log_model(self, model, rows, registered_name: str | None, card: dict) -> ModelRecord:
        return self.log_model_later(model, rows, registered_name, card).result()

    def log_model_later(self, model, rows, registered_name: str | None, card: dict) -> Future[ModelRecord]:
        """log_model's answer to come: the model is exported there while this process goes on."""
        self._check()
        return self._link.ask("call", "log_model", (model, rows, registered_name, card), {})

    def log_pickled_model(self, model, registered_name: str | None, metadata: dict) -> ModelRecord:
        self._check()
        return self._link.call("call", "log_pickled_model", (model, registered_name, metadata), {})


class RemoteTracker:
    def __init__(self, uri: str | None, experiment: str, nice: int = 0):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        check_reachable(self.uri)   # a server that is down: exit 2 before the job starts
        self._link = Link(self.uri, nice)   # MLflow starts importing there now; the store is not touched yet

    def open(self) -> None:
        """Open (or create) the store, there: once the data has been checked (a data error leaves no store)."""
        self._link.send("open", self.uri, self.experiment)

    @contextmanager
    def run(self, run_name: str, tags: dict[str, Any]) -> Iterator[RemoteRun]:
        opened = self._link.ask("create", run_name, {k: str(v) for k, v in tags.items()})
        with self._ending(RemoteRun(self._link, opened)) as run:
            yield run

    @contextmanager
    def reopen(self, run_id: str) -> Iterator[RemoteRun]:
        opened = self._link.ask("reopen", run_id)
        opened.result()
        with self._ending(RemoteRun(self._link, opened)) as run:
            yield run

    @contextmanager
    def _ending(self, run: RemoteRun) -> Iterator[RemoteRun]:
        def end(status: str) -> None:
            pending = run._buffer.take()
            if pending:
                self._link.send("values", pending)
            self._end(status)

        with ending(end):
            yield run

    def _end(self, status: str) -> None:
        ended = self._link.ask("end", status)
        if status == "FINISHED":
            ended.result()      # the store's own failure to take the run is the job's failure
        elif not self._link.gone:   # gone: nobody is left to end the run, and the job's error says so
            try:
                ended.result()
            except Exception as exc:  # noqa: BLE001 - the job's own error is the one to show
                logging.getLogger("consortium.tracking").warning("could not end the run: %s", exc)

    def close(self) -> None:
        self._link.close()


if TYPE_CHECKING:   # held to the declared protocols by the type checker (tests/unit/test_types.py)
    from orchestrator.tracking import protocol

    def _declared(run: RemoteRun, tracker: RemoteTracker) -> tuple[protocol.Run, protocol.Tracker]:
        return run, tracker
