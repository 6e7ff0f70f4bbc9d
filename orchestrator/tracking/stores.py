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


def runs_link(base: str, experiment_id: str) -> str:
    """The MLflow UI's training-runs table of one experiment (3.17 opens an experiment on its GenAI
    overview otherwise)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of one run."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


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


# How long the end of a run waits for an unreachable store to take its buffered metrics.
RETRY_S = float(os.environ.get("CONSORTIUM_TRACKING_RETRY_S", "300"))
STORE_WAIT_S = float(os.environ.get("CONSORTIUM_STORE_WAIT_S", "60"))

_AWAY = ("connection refused", "max retries exceeded", "failed to establish a new connection",
         "connection reset", "remotedisconnected", "connection aborted", "database is locked",
         "503 server error", "502 server error", "service unavailable", "bad gateway")


def unreachable(exc: BaseException) -> bool:
    """The store is away for now (a server restarting, a locked SQLite file), not a call it refuses."""
    import requests

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        if any(s in str(seen).lower() for s in _AWAY):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def patient(fn, *args, within: float | None = None, **kwargs):
    """A store call that waits up to `within` seconds (RETRY_S) for a store that is away, then
    raises; any other failure gets the few quick retries of `retrying`."""
    import logging

    deadline = time.monotonic() + (RETRY_S if within is None else within)
    delay, warned, quick = 0.5, False, 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if unreachable(exc):
                if time.monotonic() >= deadline:
                    raise
                if not warned:
                    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                    logging.getLogger("consortium.tracking").warning(
                        "tracking store unreachable (%s): waiting for it to come back", first)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            quick += 1
            if quick >= 5:
                raise
            time.sleep(0.2 * 2 ** (quick - 1))


def first_touch(uri: str):
    """A client whose store's schema is complete. A creator that does not take our lock may be
    migrating the new file right now (MLflow then fails with 'table ... already exists' or
    'Online migration expected to match one row'): wait for it and retry. If it died halfway (the
    schema stays out of date, or its batch-migration tables are left behind), finish the job."""
    deadline, delay, attempt = time.monotonic() + STORE_WAIT_S, 0.2, 0
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    fresh = db is not None and not db.exists()
    templated = fresh and _from_template(db)
    while True:
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
            if fresh and not templated:
                _keep_template(db)
            return client
        except Exception as exc:
            if not uri.startswith("sqlite:") or time.monotonic() > deadline:
                raise UserError(f"tracking.uri {uri}", [f"cannot open the MLflow store: "
                                                        f"{str(exc).strip().splitlines()[0][:300]}"]) from None
            attempt += 1
            from orchestrator.adapters.mlflow import forget_engines

            forget_engines(uri)   # MLflow's cached engine of the failed attempt: retry from a clean one
            time.sleep(delay)   # another process is creating the schema: let it finish
            delay = min(delay * 2, 2.0)
            if attempt >= 3 and ("out-of-date database schema" in str(exc) or "_alembic_tmp_" in str(exc)):
                _finish_migration(uri)


def _template() -> Path:
    """An empty store as this MLflow version makes it (schema migrated, the Default experiment),
    kept from the first new store on this machine: a new store is then a copy, not ~1 s of migrations."""
    from importlib.metadata import version

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "consortium"
    return cache / f"mlflow-{version('mlflow')}-empty-store.db"


def _from_template(db: Path) -> bool:
    """Create `db` as a copy of the template, its Default experiment's creation time and artifact
    location (./mlruns/0 of this directory) as MLflow would have set them. False: no template."""
    import shutil
    import sqlite3

    template = _template()
    if os.environ.get("CONSORTIUM_STORE_TEMPLATE") == "0" or not template.is_file():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        shutil.copyfile(template, tmp)
        now = int(time.time() * 1000)
        con = sqlite3.connect(tmp)
        with con:
            con.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                        "WHERE experiment_id = 0", (os.path.join(os.path.abspath("mlruns"), "0"), now, now))
        con.close()
        os.link(tmp, db)    # never over a store someone else created meanwhile
        return True
    except (OSError, sqlite3.Error):
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _keep_template(db: Path) -> None:
    """`db` was just created by MLflow and holds nothing of ours yet: keep a copy as the template."""
    import shutil
    import sqlite3

    template = _template()
    if os.environ.get("CONSORTIUM_STORE_TEMPLATE") == "0" or template.is_file():
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.new")
        shutil.copyfile(db, tmp)
        con = sqlite3.connect(tmp)
        try:
            empty = con.execute("SELECT (SELECT COUNT(*) FROM experiments), (SELECT COUNT(*) FROM runs)").fetchone()
        finally:
            con.close()
        if empty == (1, 0):    # a process that is not ours may have used it already
            tmp.replace(template)
    except (OSError, sqlite3.Error):
        pass   # only a cache
    finally:
        if "tmp" in locals():
            tmp.unlink(missing_ok=True)


def _finish_migration(uri: str) -> None:
    """Bring a half-migrated SQLite store to MLflow's current schema (a migration that died left it)."""
    import sqlalchemy

    from orchestrator.adapters.mlflow import forget_engines, upgrade_db

    forget_engines(uri)   # this process's failed attempt still holds the file through MLflow's cached engine
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as conn:
            left = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table' "
                                        "AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'").fetchall()
            for (name,) in left:   # fetched first: a DROP while the SELECT is open is 'table is locked'
                conn.exec_driver_sql(f'DROP TABLE "{name}"')
        upgrade_db(engine)
    except Exception:  # noqa: BLE001 - someone else is migrating after all: the caller tries again
        pass
    finally:
        engine.dispose()
