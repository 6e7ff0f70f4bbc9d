"""The tracking process: MLflow, away from the job's critical path.

`consortium run` starts it first thing (`tracking.remote.RemoteTracker`). While the job's own
process imports torch, prepares the data and trains, this one imports MLflow, opens (or creates)
the store and the run, and then writes what the job sends: params, tags, each round's metrics,
artifacts, the figures the job drew, and the model (traced, exported and registered here). On two
cores the two overlap; the job waits for MLflow only at its end.

Requests (`tracking.link`) run in the order sent. Records of the `consortium` loggers go back to
the job, to be shown where it shows its own. The process ignores Ctrl-C and SIGTERM (the job
decides how its run ends) and leaves when the socket closes; a job that died without ending its
run leaves it KILLED, with everything it sent kept.
"""
from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection

from orchestrator.tracking.link import encode_error


class _Forward(logging.Handler):
    def __init__(self, send):
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - the job is gone: nobody to tell
            pass


class Server:
    def __init__(self, conn: Connection):
        self.conn = conn
        self._send_lock = threading.Lock()
        self.inbox: queue.Queue = queue.Queue()
        self.tracker = None
        self.run = None
        self.ended = False
        self.broken: BaseException | None = None   # the store could not be opened: every answer says so
        self.previous: str | None = None
        self.dirty = False        # metrics added since the last flush
        self.warm = threading.Event()   # set when warm_up is done (torch.export is not thread-safe)

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message)
        with self._send_lock:
            try:
                self.conn.send_bytes(data)
            except OSError:
                pass   # the job is gone: what it sent is still written, its run still ended

    def read(self) -> None:
        """Drain the socket at once, also while MLflow is still importing: the job never blocks on a send."""
        try:
            while True:
                self.inbox.put(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.inbox.put(None)

    def serve(self) -> None:
        while (data := self.inbox.get()) is not None:
            req_id, op, args, kwargs = pickle.loads(data)
            try:
                if self.broken is not None:
                    raise self.broken
                if op == "call" and args[0] == "flush" and not args[1] and req_id is None:
                    # rounds that queued up while MLflow was opening go as one batch, not one each
                    self.dirty = True
                    if self.inbox.empty():
                        self._flush()
                    continue
                if self.dirty and op != "values":
                    self._flush()   # what is read or written next sees every metric sent before it
                result = getattr(self, f"op_{op}")(*args, **kwargs)
                if req_id is not None:
                    self.send(("ok", req_id, result))
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the job
                if op == "open":
                    self.broken = exc
                if req_id is not None:
                    self.send(("err", req_id, encode_error(exc)))
                else:
                    logging.getLogger("consortium.tracking").warning("tracking call %s failed: %s", op,
                                                                     encode_error(exc)[2])
        if self.run is not None and not self.ended:   # the job died without ending its run
            try:
                self.tracker.finish(self.run, "KILLED")
            except Exception:  # noqa: BLE001
                pass

    def _flush(self) -> None:
        self.dirty = False
        self.run.flush()

    # -- requests -------------------------------------------------------------------------------
    def op_open(self, uri: str, experiment: str) -> None:
        from orchestrator.tracking.store import Tracker

        self.tracker = Tracker(uri, experiment)

    def op_create(self, run_name: str, tags: dict) -> tuple:
        from orchestrator.tracking.runs import previous_run
        from orchestrator.tracking.store import TrackedRun

        run_id = self.tracker.create(run_name, tags)
        self.run = TrackedRun(self.tracker.client, run_id, self.tracker.experiment_id(), self.tracker.experiment,
                              self.tracker.uri)
        # the summary's "beside this job's previous run", found now rather than after the job
        self.previous = previous_run(self.tracker.uri, self.run.experiment_id, run_id, tags.get("job", ""))
        return self._info()

    def op_reopen(self, run_id: str) -> tuple:
        from orchestrator.tracking.store import attach_run

        self.run = attach_run(self.tracker.uri, run_id)
        self.tracker.client.update_run(run_id, status="RUNNING")
        return self._info()

    def _info(self) -> tuple:
        return (self.run.run_id, self.run.experiment_id, self.run.experiment, self.run.tracking_uri,
                self.previous or "")

    def op_values(self, values: list) -> None:
        self.run.add_values(values)

    CALLS = frozenset({"flush", "log_params", "set_tags", "log_text", "log_dict", "log_bytes", "metric_keys",
                       "history", "tag", "log_model", "log_pickled_model"})   # the Run protocol's, as RemoteRun sends them

    def op_call(self, method: str, args: tuple, kwargs: dict):
        if method not in self.CALLS:
            raise AttributeError(f"the tracking process does not take {method!r}")
        if method in ("log_model", "log_pickled_model"):
            self.warm.wait()   # never two exports at once
        return getattr(self.run, method)(*args, **kwargs)

    def op_end(self, status: str) -> None:
        self.ended = True
        self.tracker.finish(self.run, status)


def warm_up(done: threading.Event) -> None:
    """What the end of the job asks for, loaded while it trains: torch, MLflow's pytorch flavor
    and torch's exporter (the logged model is traced)."""
    try:
        import mlflow.pytorch  # noqa: F401
        import torch

        import orchestrator.tracking.flavor  # noqa: F401

        # a process's first torch.export loads and sets up the tracer (~1 s): not while the job waits
        torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    except Exception:  # noqa: BLE001 - the request that needs it will say what is missing
        pass
    finally:
        done.set()


# stores MLflow opens through SQLAlchemy (`mlflow.store.db`): the scheme before any "+driver"
_SQL = ("sqlite", "postgresql", "mysql", "mssql")


def import_ahead(scheme: str) -> None:
    """What opening the store will import, imported before the job says which store (so that a data
    or placement error still leaves no store behind): for a database, SQLAlchemy, MLflow's tables
    and their mappers (~1 s, most of opening a store)."""
    if scheme.split("+")[0] not in _SQL:
        return
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import sqlalchemy.orm

    sqlalchemy.orm.configure_mappers()


def main(fd: int, scheme: str = "", nice: str = "0") -> None:
    os.nice(int(nice))   # a Ray job's: Ray's start-up and workers come first, MLflow takes idle cycles
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the job's: it ends the run KILLED
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = Server(Connection(fd))
    threading.Thread(target=server.read, name="consortium-tracking-reader", daemon=True).start()
    log = logging.getLogger("consortium")
    log.addHandler(_Forward(server.send))
    log.setLevel(logging.INFO)
    log.propagate = False
    import orchestrator.tracking.store  # noqa: F401 - MLflow, while the job reads its data
    import_ahead(scheme)
    # the exporter warms up now, not once the store is open: the job may take a while to say which
    threading.Thread(target=warm_up, args=(server.warm,), name="consortium-tracking-warm-up", daemon=True).start()
    server.serve()
    # MLflow leaves threads of its own running (async loggers, a registry poller): do not wait for them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:4])
