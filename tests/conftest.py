"""Shared fixtures: real MLflow stores in tmp dirs, and one full federated run shared by several specs."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# Keep everything the stack writes inside the test session's temp area.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# SuperNodes the tests start heartbeat every 10 s (Flower's least; its own is 30 s): a crashed
# hospital's SuperNode is let back in after 20 s instead of 60 s (orchestrator.federation.supernode)
os.environ.setdefault("CONSORTIUM_HEARTBEAT_S", "10")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, cwd: Path):
    """`consortium serve MODEL` in a process group of its own on a free port, yielded (its port)
    once /ping answers; stopped with SIGINT, as Ctrl-C would."""
    import signal
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "CONSORTIUM_HOME": str(cwd / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", model_uri, "--port", str(port),
                             "--tracking-uri", tracking_uri], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read() if proc.poll() else ""
                time.sleep(0.3)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store; the cwd is tmp_path so nothing lands in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path / ".consortium"))
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `consortium` command in a fresh process."""
    full_env = {**os.environ, "CONSORTIUM_HOME": str(cwd / ".consortium"), **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri() in this process exports it
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def fedavg_run(tmp_path_factory):
    """configs/hospitals_fedavg.yaml as shipped (10 hospitals, 20 rounds), once per session, in Flower's
    simulation engine (real Ray actors; `engine: auto` would run it in process: test_vectorized_engine)."""
    import time

    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    work = tmp_path_factory.mktemp("fedavg")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    old = Path.cwd()
    os.chdir(work)
    try:
        job = load_job(CONFIGS / "hospitals_fedavg.yaml", [f"tracking.uri={uri}", "tracking.experiment=spec",
                                                            "federated.engine=simulation"])
        t0 = time.perf_counter()
        result = run_job(job)
        wall = time.perf_counter() - t0
    finally:
        os.chdir(old)
    return {"result": result, "uri": uri, "job": job, "wall": wall, "dir": work}


class ProgressRecorder:
    """A progress listener that keeps every step (what the console's display is fed)."""

    def __init__(self):
        self.begun: list[tuple[str, int]] = []
        self.steps: list = []

    def begin(self, unit, total, title):
        self.begun.append((unit, total))

    def step(self, step):
        self.steps.append(step)

    def end(self):
        pass


@pytest.fixture
def progress_steps():
    from orchestrator.jobs import progress

    recorder = ProgressRecorder()
    progress.listen(recorder)
    yield recorder
    progress.listen(None)
