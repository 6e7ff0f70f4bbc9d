"""MLflow, and only this package: one run per job, batched metrics, the model and its registered version.

Reading runs back (compare, runs, models, a source model for transfer learning) is `tracking.runs`.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator.spec.errors import UserError
from orchestrator.tracking.protocol import MetricBuffer, Values, done, ending
from orchestrator.tracking.records import ModelRecord
from orchestrator.tracking.stores import (RETRY_S, _artifact_root, check_reachable, first_touch, patient, resolve_uri,
                                          retrying, store_lock)

_log = logging.getLogger("consortium.tracking")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars on our console
# MLflow logs its schema migrations at INFO on a new store; the console is ours (CONSORTIUM_VERBOSE=1 shows them)
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if os.environ.get("CONSORTIUM_VERBOSE") == "1" else "WARNING")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


@contextmanager
def quiet_registry() -> Iterator[None]:
    """MLflow prints "Successfully registered model ..." and "Created version ..." itself (to the
    stderr of the moment), and torch.export warns about what it traces (an RNN's flat weights); the
    run's summary says which version was made."""
    import contextlib
    import io
    import warnings

    if os.environ.get("CONSORTIUM_VERBOSE") == "1":
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class TrackedRun:
    """A live MLflow run in this process. Metric logging is thread-safe (Flower's server runs in a thread)."""

    tracked = True
    answers_here = False   # reports read metrics back from the store: flushed first
    exports_here = True

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, experiment: str,
                 tracking_uri: str = ""):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self.previous_run: str | None = None   # looked up by the tracking process only
        self._buffer = MetricBuffer()
        self._unsent_since: float | None = None
        self._next_try = 0.0

    @property
    def last(self) -> dict[str, float]:
        return self._buffer.last

    def keep_history(self) -> None:
        """This new run's metrics are all logged from this process: keep a copy of each value, so
        history() and metric_keys() need no query per key (a 1 000-hospital run has thousands)."""
        self._buffer.keep()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record now, sent with the next flush() as one log_batch."""
        self._buffer.add(metrics, step)

    def add_values(self, values: Values) -> None:
        """(key, value, timestamp ms, step) recorded elsewhere (`tracking.remote`): sent with the next flush()."""
        self._buffer.add_values(values)

    def tag(self, name: str) -> str | None:
        return patient(self.client.get_run, self.run_id).data.tags.get(name)

    def flush(self, wait: float = 0.0) -> bool:
        """Send buffered metrics. If the store is unreachable (a server restarting, a locked
        SQLite file) they stay buffered for the next flush, training goes on; with `wait` > 0,
        keep retrying that many seconds, then raise. True when nothing is left buffered."""
        deadline = time.monotonic() + wait
        delay = 0.5
        if wait <= 0 and self._unsent_since is not None and time.monotonic() < self._next_try:
            return False  # the store was away a moment ago: don't stall training on it each epoch
        while True:
            pending = self._buffer.take()
            sent = 0
            try:
                for i in range(0, len(pending), 1000):
                    self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step)
                                                                for k, v, ts, step in pending[i : i + 1000]])
                    sent = i + 1000
                if self._unsent_since is not None:
                    _log.warning("tracking store reachable again: %d buffered metric values sent", len(pending))
                    self._unsent_since = None
                return True
            except Exception as exc:
                self._buffer.put_back(pending[sent:])
                self._next_try = time.monotonic() + 3.0
                if self._unsent_since is None:
                    self._unsent_since = time.monotonic()
                    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                    _log.warning("tracking store unreachable (%s): metrics are buffered and sent when it is back",
                                 first)
                if time.monotonic() >= deadline:
                    if wait > 0:
                        raise
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            patient(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        patient(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        patient(self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        patient(self.client.log_dict, self.run_id, data, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        patient(self.client.log_figure, self.run_id, figure, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        import posixpath
        import tempfile
        from pathlib import Path

        folder, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_bytes(data)
            patient(self.client.log_artifact, self.run_id, str(Path(tmp) / name), folder or None)

    def metric_keys(self) -> list[str]:
        if self._buffer.kept is not None:
            return self._buffer.keys()
        return sorted(patient(self.client.get_run, self.run_id).data.metrics)

    def history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        if self._buffer.kept is not None:
            return self._buffer.history(keys)
        return {k: [(m.step, m.value) for m in patient(self.client.get_metric_history, self.run_id, k)] for k in keys}

    def log_model(self, model, rows, registered_name: str | None, card: dict) -> ModelRecord:
        """Log the model (tracking.flavor: raw columns by name in, class and probabilities out) with
        its column signature, an input example of raw rows and explicit requirements (fast);
        register it if named."""
        import numpy as np
        import torch
        from mlflow.models import Model

        from orchestrator.tracking import flavor

        signature, example = flavor.signature_and_example(card, rows)
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                        f"numpy=={np.__version__}", f"pandas=={__import__('pandas').__version__}"]
        with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None), quiet_registry():
            info = Model.log(
                None, flavor, name="model", pytorch_model=model.eval(), card=card, signature=signature,
                input_example=example, pip_requirements=requirements, registered_model_name=registered_name,
                await_registration_for=0,
            )
        version = getattr(info, "registered_model_version", None)
        return ModelRecord(info.model_uri, registered_name, str(version) if version is not None else None)

    def log_model_later(self, model, rows, registered_name: str | None, card: dict) -> Future[ModelRecord]:
        """Exported now, in this process (`exports_here`)."""
        return done(self.log_model(model, rows, registered_name, card))

    def log_pickled_model(self, model, registered_name: str | None, metadata: dict) -> ModelRecord:
        """A torch module MLflow pickles whole (not exported: a GAN's generator is not its forward),
        loaded back by `mlflow.pytorch.load_model` as the module itself; registered if named."""
        import mlflow.pytorch
        import numpy as np
        import torch

        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                        f"numpy=={np.__version__}"]
        with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None), quiet_registry():
            info = mlflow.pytorch.log_model(model.eval(), name="model", serialization_format="pickle",
                                            pip_requirements=requirements, metadata=metadata,
                                            registered_model_name=registered_name, await_registration_for=0)
        version = getattr(info, "registered_model_version", None)
        return ModelRecord(info.model_uri, registered_name, str(version) if version is not None else None)

    def register(self, model_uri: str, name: str) -> str:
        """Register a logged model under `name`; returns models:/NAME/VERSION."""
        mlflow.set_tracking_uri(self.tracking_uri)
        with quiet_registry():
            version = mlflow.register_model(model_uri, name, await_registration_for=0)
        return f"models:/{name}/{version.version}"


def _param_str(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def attach_run(uri: str, run_id: str) -> TrackedRun:
    """A handle on a run another process opened (Ray Train's rank 0 logs into the driver's run)."""
    client = MlflowClient(uri)
    info = client.get_run(run_id).info
    name = client.get_experiment(info.experiment_id).name
    return TrackedRun(client, run_id, info.experiment_id, name, uri)


class Tracker:
    def __init__(self, uri: str | None, experiment: str):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        check_reachable(self.uri)
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):
            # The first touch of a new SQLite file creates (and migrates) the tracking and registry
            # schemas: done once, under the lock, never by two jobs at the same time. A process that
            # does not take our lock (a notebook's MlflowClient, `mlflow ui`) may be creating them
            # at this very moment: then MLflow's migration fails here, and we wait for it and retry.
            self.client = first_touch(self.uri)

    def experiment_id(self) -> str:
        try:
            with store_lock(self.uri):
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is not None:
                    return exp.experiment_id
                try:
                    return self.client.create_experiment(self.experiment, artifact_location=_artifact_root(self.uri))
                except Exception:
                    # another job created it a moment ago (a shared server has no lock of ours)
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    return exp.experiment_id
        except Exception as exc:  # unreachable server, unwritable file, bad scheme ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"tracking.uri {self.uri}", [f"cannot open the MLflow store: {first[:300]}"]) from None

    def create(self, run_name: str, tags: dict[str, Any]) -> str:
        """A new RUNNING run, left open (another process fills and ends it); its id."""
        created = retrying(self.client.create_run, self.experiment_id(), run_name=run_name,
                           tags={k: str(v) for k, v in tags.items()})
        # A short id tells repeated runs of one job apart at a glance in the UI.
        retrying(self.client.update_run, created.info.run_id, name=f"{run_name}-{created.info.run_id[:6]}")
        return created.info.run_id

    @contextmanager
    def run(self, run_name: str, tags: dict[str, Any]) -> Iterator[TrackedRun]:
        """FINISHED on success; KILLED on Ctrl-C/SIGTERM; FAILED on any error. What was logged stays."""
        run_id = self.create(run_name, tags)
        run = TrackedRun(self.client, run_id, self.experiment_id(), self.experiment, self.uri)
        with ending(lambda status: self.finish(run, status)):
            yield run

    @contextmanager
    def reopen(self, run_id: str) -> Iterator[TrackedRun]:
        """Continue an existing run (resume): RUNNING again, then FINISHED/FAILED/KILLED as usual."""
        run = attach_run(self.uri, run_id)
        self.client.update_run(run_id, status="RUNNING")
        with ending(lambda status: self.finish(run, status)):
            yield run

    def close(self) -> None:
        """Nothing to let go of: the client holds no process."""

    def finish(self, run: TrackedRun, status: str) -> None:
        """Send what is buffered, then end the run FINISHED, FAILED or KILLED."""
        try:
            # a store that is away gets time to come back (less when the job is being stopped)
            run.flush(wait=RETRY_S if status == "FINISHED" else min(RETRY_S, 15.0))
        finally:
            # a run being stopped waits less for a store that is away
            patient(self.client.set_terminated, run.run_id, status, within=RETRY_S if status == "FINISHED" else 15.0)

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)


if TYPE_CHECKING:   # held to the declared protocols by the type checker (tests/unit/test_types.py)
    from orchestrator.tracking import protocol

    def _declared(run: TrackedRun, tracker: Tracker) -> tuple[protocol.Run, protocol.Tracker]:
        return run, tracker
