"""`consortium ui`: the MLflow UI for the configured store, on the loopback address only."""
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


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # as the server itself will: connections of a previous server in TIME_WAIT don't count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start(uri: str, port: int) -> subprocess.Popen:
    """The server in its own process group, so stopping it stops its workers too."""
    if not _port_free(port):
        raise UserError("--port", [f"127.0.0.1:{port} is in use: pick another with --port"])
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MLflow UI exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the MLflow UI did not answer on 127.0.0.1:{port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve(tracking_uri: str | None, port: int, log=print) -> None:
    from orchestrator.tracking.store import resolve_uri

    from orchestrator.jobs.runtime import stop_on_sigterm

    uri = resolve_uri(tracking_uri)
    stop_on_sigterm()  # `kill` stops the server it started too, like Ctrl-C
    proc = start(uri, port)
    try:
        wait_healthy(port, proc)
        log(f"MLflow UI for {uri}\n  http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning\n"
            f"Ctrl-C stops it.")
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)
