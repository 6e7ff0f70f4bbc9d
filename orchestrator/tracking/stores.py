"""Where the MLflow store is, and touching it safely: the URI, a server that must answer, the first
touch of a SQLite file under a lock, and store calls retried on transient failures."""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.spec.errors import UserError


def resolve_uri(uri: str | None) -> str:
    """YAML `tracking.uri`, else $MLFLOW_TRACKING_URI, else ./mlruns.db (absolute, so workers agree)."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def _artifact_root(uri: str) -> str | None:
    # A SQLite store keeps artifacts beside the database file, not in whatever the cwd is.
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """An http(s) tracking server must answer before a run is created (else exit 2, nothing lost)."""
    from urllib.parse import urlparse

    if not uri.startswith(("http://", "https://")):
        return
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout):
            return
    except OSError:
        raise UserError("tracking.uri", [f"nothing answers at {uri}: start the server "
                                         f"(`mlflow server --host 127.0.0.1 --port {port}`) or fix the address"]) from None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the first touches of a SQLite store (schema creation, experiment creation)
    across processes: four jobs started together must not race to create the same tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def retrying(fn, *args, attempts: int = 5, **kwargs):
    """A store call retried on a transient failure (a locked SQLite file, a restarting server)."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
