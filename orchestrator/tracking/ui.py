"""`consortium ui` (the MLflow UI for the configured store, on the loopback address only) and
`consortium server` (a team's tracking server: a database store, served artifacts), and what both
and the model server need: a free port, a child in its own process group, health, a clean stop."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from orchestrator.spec.errors import UserError


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        # as the server itself will: connections of a previous server in TIME_WAIT don't count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def start(uri: str, port: int, log_file: Path | None = None) -> subprocess.Popen:
    """The server in its own process group, so stopping it stops its workers too; its own log into
    `log_file` (None: this console)."""
    if not _port_free(port):
        raise UserError("--port", [f"127.0.0.1:{port} is in use: pick another with --port"])
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    if log_file is None:
        return subprocess.Popen(cmd, env=env, start_new_session=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as f:
        return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=f, stderr=subprocess.STDOUT)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0, what: str = "the MLflow UI",
                 host: str = "127.0.0.1") -> None:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer on {host}:{port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve(tracking_uri: str | None, port: int, log=print, log_file: Path | None = None) -> None:
    from orchestrator.tracking.store import resolve_uri

    from orchestrator.process import stop_on_sigterm

    uri = resolve_uri(tracking_uri)
    stop_on_sigterm()  # `kill` stops the server it started too, like Ctrl-C
    if uri.startswith("sqlite:"):
        from orchestrator.tracking.stores import first_touch

        # a new store's schema made here first: the server and the links read below would both
        # create its tables at once, and the server dies on 'table ... already exists'
        first_touch(uri)
    proc = start(uri, port, log_file)
    try:
        links = landing_links(uri, f"http://127.0.0.1:{port}")   # read while the server starts
        try:
            wait_healthy(port, proc)
        except RuntimeError as exc:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file and log_file.exists() else ""
            raise UserError("consortium ui", [f"{exc}; its log ({log_file}):\n{tail}"]) from None
        log("\n".join([f"MLflow UI for {uri}", *links,
                        *([f"  server log    {log_file}"] if log_file else []), "Ctrl-C stops it."]))
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)


def landing_links(uri: str, base: str, limit: int = 5) -> list[str]:
    """Links that land where a person wants to be: each experiment's training-runs table (MLflow
    3.17 opens an experiment on its GenAI overview) and the newest run, newest experiments first."""
    from orchestrator.tracking.stores import run_link, runs_link

    lines = [f"  experiments   {base}/#/experiments?workflowType=machine_learning"]
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        newest = []
        for exp in client.search_experiments():
            runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                newest.append((runs[0].info.start_time, exp, runs[0]))
    except Exception:  # noqa: BLE001 - the UI itself still starts; only the shortcuts are missing
        return lines
    newest.sort(key=lambda t: t[0], reverse=True)
    for i, (_, exp, run) in enumerate(newest[:limit]):
        lines.append(f"  {exp.name:<13} {runs_link(base, exp.experiment_id)}")
        if i == 0:
            lines.append(f"  newest run    {run_link(base, exp.experiment_id, run.info.run_id)}  "
                         f"({run.info.run_name})")
    return lines


# --------------------------------------------------------------------------- consortium server
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def check_backend(uri: str) -> None:
    """A database URI MLflow can keep runs in, and (PostgreSQL, MySQL) a database that answers."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in DATABASES:
        raise UserError("--backend-store-uri", [f"{uri!r}: expected a database URI, e.g. "
                                                "postgresql://USER:PASSWORD@HOST:5432/DB or sqlite:///PATH.db"])
    if scheme == "sqlite":
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 5} if scheme == "postgresql" else {})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:300]
        raise UserError("--backend-store-uri", [f"cannot connect to {_hide_password(uri)}: {first}"]) from None
    finally:
        engine.dispose()


def _hide_password(uri: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@", 1)
    return uri


def artifact_destination(artifacts: str) -> str:
    """A directory (made absolute, created), or an object store URI as is (s3://BUCKET/PATH, with
    MLFLOW_S3_ENDPOINT_URL for S3-compatible storage such as MinIO)."""
    if "://" in artifacts:
        return artifacts
    path = Path(artifacts).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def start_server(backend: str, artifacts: str, host: str, port: int, workers: int = 2,
                 allowed_hosts: str | None = None, log_file: Path | None = None) -> subprocess.Popen:
    """`mlflow server`: runs in the database, artifacts served from `artifacts` (clients upload
    and download through the server: nobody needs the folder mounted), MLflow's job-execution
    workers off (~1.8 GB, for GenAI jobs this project does not run) unless
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true is set."""
    if not _port_free(port, host):
        raise UserError("--port", [f"{host}:{port} is in use: pick another with --port"])
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "server", "--backend-store-uri", backend,
           "--artifacts-destination", artifact_destination(artifacts), "--serve-artifacts",
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:  # MLflow answers only Host headers it allows: loopback and private IPs by default
        cmd += ["--allowed-hosts", allowed_hosts]
    if log_file is None:
        return subprocess.Popen(cmd, env=env, start_new_session=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:  # MLflow's and uvicorn's own lines: kept, off the console
        return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def serve_tracking(backend: str | None, artifacts: str, host: str, port: int, workers: int,
                   allowed_hosts: str | None = None, log_file: Path | None = None, log=print) -> None:
    from orchestrator.process import stop_on_sigterm

    backend = backend or f"sqlite:///{Path.cwd() / 'mlruns.db'}"
    check_backend(backend)
    stop_on_sigterm()
    t0 = time.monotonic()
    proc = start_server(backend, artifacts, host, port, workers, allowed_hosts, log_file)
    try:
        try:
            wait_healthy(port, proc, timeout=120, what="the MLflow tracking server", host=host)
        except RuntimeError as exc:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file and log_file.exists() else ""
            raise UserError("consortium server", [f"{exc}; its log ({log_file}):\n{tail}"]) from None
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        log(f"MLflow tracking server on {_hide_password(backend)}, artifacts in {artifact_destination(artifacts)} "
            f"(up in {time.monotonic() - t0:.1f} s)\n"
            f"  tracking.uri: http://{shown}:{port}   (in the job YAML, or export MLFLOW_TRACKING_URI=http://{shown}:{port})\n"
            f"  UI: http://{shown}:{port}/#/experiments?workflowType=machine_learning\n"
            + (f"  server log: {log_file}\n" if log_file else "") + "Ctrl-C stops it.")
        proc.wait()
        if proc.returncode:
            raise UserError("consortium server", [f"the MLflow server exited with code {proc.returncode}"])
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)
