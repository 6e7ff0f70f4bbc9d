"""The socket between a job and its tracking process (`tracking.sidecar`), the job's end of it.

Length-framed pickles (`multiprocessing.connection`); a request is (id or None, op, args, kwargs),
an answer ("ok"|"err", id, payload), a log record ("log", logger name, level, text). Errors travel
as data (`encode_error`): a UserError is raised again as itself, anything else as TrackingError.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path

from orchestrator.spec import errors


def encode_error(exc: BaseException) -> tuple:
    if isinstance(exc, errors.UserError):
        return ("user", type(exc).__name__, exc.source, exc.problems)
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    return ("other", type(exc).__name__, text, "".join(traceback.format_exception(exc))[-4000:])


class TrackingError(RuntimeError):
    """A failure in the tracking process that is not the user's: its type, message and traceback.
    `run_left_open`: the process itself is gone, so nobody could end the run."""

    run_left_open = False


class TrackingLost(TrackingError):
    run_left_open = True


def _raise(encoded: tuple):
    if encoded[0] == "user":
        _, name, source, problems = encoded
        raise getattr(errors, name, errors.UserError)(source, problems)
    _, name, text, trace = encoded
    raise TrackingError(f"{name}: {text}\n--- in the tracking process ---\n{trace}")


class Link:
    """The socket to the tracking process, a thread reading its answers and log records."""

    def __init__(self, uri: str = "", nice: int = 0):
        """`uri`: the store to be opened later; its kind tells the process what to import ahead.
        `nice`: the process's scheduling priority, lowered for a job whose own processes come first."""
        import socket

        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.tracking.sidecar", str(theirs.fileno()),
                                      uri.split(":", 1)[0], str(nice)],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._sock = ours   # shutdown() wakes our reader and tells theirs we are done (a close alone does neither)
        self.conn = Connection(os.dup(ours.fileno()))
        self._lock = threading.Lock()
        self._ids = iter(range(1, 1 << 62))
        self._waiting: dict[int, Future] = {}
        self._closing = False
        self.gone: str | None = None   # why the tracking process cannot take more, once it cannot
        self._reader = threading.Thread(target=self._read, name="consortium-tracking-answers", daemon=True)
        self._reader.start()

    def send(self, op: str, *args, want: bool = False, **kwargs) -> Future | None:
        """Pickled now (what is sent is the object as it is at this call), answered later."""
        future: Future | None = Future() if want else None
        with self._lock:
            req_id = next(self._ids) if future is not None else None
            if future is not None and req_id is not None:
                self._waiting[req_id] = future
            data = pickle.dumps((req_id, op, args, kwargs))
            try:
                self.conn.send_bytes(data)
            except OSError:
                self._lost()
                if future is not None and req_id is not None:
                    self._waiting.pop(req_id, None)
                    future.set_exception(TrackingLost(self.gone))
        return future

    def _lost(self) -> None:
        if self.gone is None and not self._closing:
            try:
                code = self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                code = None
            self.gone = (f"the tracking process (pid {self.proc.pid}) ended unexpectedly (exit code {code}): "
                         "the run keeps what it was sent before that")

    def ask(self, op: str, *args, **kwargs) -> Future:
        """Sent now, answered later: the answer's future."""
        future = self.send(op, *args, want=True, **kwargs)
        assert future is not None   # want=True always makes one
        return future

    def call(self, op: str, *args, **kwargs):
        return self.ask(op, *args, **kwargs).result()

    def _read(self) -> None:
        try:
            while True:
                kind, *rest = pickle.loads(self.conn.recv_bytes())
                if kind == "log":
                    name, level, text = rest
                    logging.getLogger(name).log(level, "%s", text)
                    continue
                req_id, payload = rest
                with self._lock:
                    future = self._waiting.pop(req_id)
                if kind == "ok":
                    future.set_result(payload)
                else:
                    try:
                        _raise(payload)
                    except Exception as exc:  # noqa: BLE001 - handed to whoever waits
                        future.set_exception(exc)
        except (EOFError, OSError):
            self._lost()
            with self._lock:
                waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                future.set_exception(TrackingLost(self.gone or "the tracking process ended before it answered"))

    def close(self, timeout: float = 30.0) -> None:
        import socket

        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5.0)
        self.conn.close()


