"""Rank 0's epochs reach the driver, which logs them: Ray Train's workers never import MLflow and
never need to reach the tracking store (a SQLite file on the driver's machine, a server the workers'
nodes cannot see).

The driver listens on its node's address, on a port of its own, for one connection at a time from
rank 0 (a restarted group reconnects); the first line is a token only this job's workers were
given, then one JSON object per line: {"step": N, "metrics": {...}} or {"tags": {...}}. JSON, not
pickle: nothing a peer sends is executed.
"""
from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import threading
from typing import TYPE_CHECKING

from orchestrator.jobs import progress

log = logging.getLogger("consortium.ray")


class Inbox:
    """The driver's end: every line rank 0 sends is logged into `run` as it arrives."""

    def __init__(self, run, total_epochs: int, host: str):
        self.run, self.total = run, total_epochs
        self.token = secrets.token_hex(16)
        self._server = socket.create_server((host, 0))
        self.address = (host, self._server.getsockname()[1])
        self._readers: list[threading.Thread] = []
        self.received = self.failed = 0
        self._closing = threading.Event()
        self._dropping = False
        self._accepting = threading.Thread(target=self._accept, name="consortium-epoch-inbox", daemon=True)
        self._accepting.start()

    def for_workers(self) -> list:
        return [*self.address, self.token]

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while True:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                if self._closing.is_set():   # nothing waits to be accepted any more
                    self._server.close()
                    return
                continue
            except OSError:
                return
            conn.settimeout(None)
            reader = threading.Thread(target=self._read, args=(conn,), name="consortium-epoch-reader", daemon=True)
            self._readers.append(reader)
            reader.start()

    def _read(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            if not hmac.compare_digest(lines.readline().strip(), self.token.encode()):
                return   # not this job's worker
            for line in lines:
                try:
                    self._take(json.loads(line))
                except Exception as exc:  # noqa: BLE001 - one bad line costs that line, not the job's record
                    self.failed += 1
                    if self.failed == 1:   # a store that is away: said once, and the job's end says it again
                        log.warning("an epoch report from rank 0 could not be logged: %s", str(exc).splitlines()[0])

    def _take(self, message: dict) -> None:
        if self._dropping:
            return
        if "tags" in message:
            self.run.set_tags(message["tags"])
        if "metrics" in message:
            step, metrics = int(message["step"]), message["metrics"]
            self.run.log_metrics(metrics, step=step)
            self.run.flush()
            self.received += 1
            if "time/epoch_s" in metrics:
                progress.step("epoch", step, self.total, metrics)

    def close(self, timeout: float = 10.0) -> None:
        """After fit(): every line rank 0 sent before it returned is logged before this returns.
        With no timeout (the job was stopped while its workers still train) nothing more is logged."""
        self._closing.set()
        if not timeout:
            self._dropping = True
            return
        self._accepting.join(timeout)
        for reader in self._readers:
            reader.join(timeout)   # each ends at its connection's end (a dead worker's too)


class Outbox:
    """Rank 0's end."""

    def __init__(self, address: list, timeout: float = 30.0):
        host, port, token = address
        try:
            self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        except OSError as exc:
            raise ConnectionError(f"Ray Train's rank 0 cannot reach the job's driver at {host}:{port} to report its "
                                  f"epochs ({exc}): the workers' nodes must reach the driver's node on any port, as "
                                  "Ray's own processes do") from None
        self._sock.settimeout(None)
        self._sock.sendall(token.encode() + b"\n")

    def _send(self, message: dict) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._send({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}})

    def set_tags(self, tags: dict) -> None:
        self._send({"tags": {k: str(v) for k, v in tags.items()}})

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._sock.close()


if TYPE_CHECKING:   # held to the declared protocol by the type checker (tests/unit/test_types.py)
    from orchestrator.tracking.protocol import Recorder

    def _declared(outbox: Outbox) -> Recorder:
        return outbox
