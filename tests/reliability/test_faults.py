"""Faults with real components: signals mid-run, concurrent jobs on one SQLite store, and a
tracking server that restarts while a job is logging to it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, free_port

pytestmark = pytest.mark.integration


def _start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, "CONSORTIUM_HOME": str(cwd / ".consortium"), **(env or {})}
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(client: MlflowClient, key: str, n: int, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"job ended early: {proc.communicate()}"
        try:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        except Exception:
            runs = []
        for r in runs:
            if len(client.get_metric_history(r.info.run_id, key)) >= n:
                return r.info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no run reached {n} steps of {key} in {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_federated_run_marks_it_killed_and_keeps_the_rounds(tmp_path, sig):
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    rounds = 100_000  # a round takes ~10 ms: the job must still be running when the signal comes
    proc = _start(["run", str(CONFIGS / "hospitals_fedavg.yaml"), f"tracking.uri={store}", f"federated.rounds={rounds}"],
                  tmp_path)
    client = MlflowClient(store)
    try:
        run_id = _wait_for_steps(client, "eval/accuracy", 3, proc)
        os.kill(proc.pid, sig)
        out, errs = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + errs
    lines = [line for line in errs.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("consortium: interrupted"), errs   # one line, no traceback
    run = client.get_run(run_id)
    logged = client.get_metric_history(run_id, "eval/accuracy")
    print(f"\n{sig.name}: run {run.info.status} after {len(logged)} rounds")
    assert run.info.status == "KILLED"
    assert 3 <= len(logged) < rounds
    assert sorted(m.step for m in logged) == list(range(1, len(logged) + 1))  # every round before the signal
    time.sleep(2)
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
            or p.ppid() == proc.pid]
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


def test_four_jobs_at_once_on_one_sqlite_store_all_finish(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    procs = [_start(["run", str(CONFIGS / "centralized.yaml"), f"tracking.uri={store}", f"seed={i}",
                     "train.epochs=6", "explain.enabled=false"], tmp_path) for i in range(4)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, errs) in zip(procs, outputs):
        assert p.returncode == 0, out + errs
        assert "database is locked" not in out + errs
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("consortium").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "eval/accuracy")) == 6 for r in runs)
    assert sorted(int(v.version) for v in client.search_model_versions("name='centralized-mlp'")) == [1, 2, 3, 4]


def test_a_tracking_server_restart_mid_run_loses_no_metrics(tmp_path):
    from orchestrator.tracking import ui

    port = free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    server = ui.start(backend, port)
    job = None
    try:
        ui.wait_healthy(port, server)
        uri = f"http://127.0.0.1:{port}"
        epochs = 15  # if training ends while the server is away, the run waits for it to come back
        job = _start(["run", str(CONFIGS / "sequences_lstm.yaml"), f"tracking.uri={uri}", f"train.epochs={epochs}",
                      "data.rows=1500"], tmp_path)
        client = MlflowClient(uri)
        run_id = _wait_for_steps(client, "eval/accuracy", 3, job)
        ui.stop(server)                       # the server goes away mid-run ...
        time.sleep(4)
        assert job.poll() is None, "the job must keep training while the server is down"
        server = ui.start(backend, port)      # ... and comes back on the same address
        ui.wait_healthy(port, server)
        out, errs = job.communicate(timeout=300)
        assert job.returncode == 0, out + errs
        # the outage really happened mid-run: metrics were buffered, or the report's writes waited
        assert "tracking store unreachable" in errs, errs
        history = client.get_metric_history(run_id, "eval/accuracy")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        ui.stop(server)


_RACER = """
import os, sys, time
from pathlib import Path
{imports}
go = Path(sys.argv[1])
while not go.exists():   # every process imported MLflow: start together, as a notebook and a job would
    time.sleep(0.005)
{work}
"""


def test_a_job_survives_outside_clients_creating_a_new_sqlite_store_at_the_same_moment(tmp_path):
    """A notebook's MlflowClient (or `mlflow ui`) opening a brand-new store at the moment a job
    opens it: both create MLflow's schema and one's migration fails halfway. The job's tracker
    waits for the other creator (or finishes a migration that died) and its run goes through."""
    job_code = _RACER.format(imports="from orchestrator.tracking.store import Tracker",
                             work="t = Tracker(sys.argv[2], 'consortium')\n"
                                  "with t.run('raced', {}) as run:\n    run.log_metrics({'m': 1.0}, 0)\n"
                                  "print(run.run_id)")
    outside_code = _RACER.format(imports="from mlflow.tracking import MlflowClient",
                                 work="MlflowClient(sys.argv[2]).search_experiments()")
    for trial in range(3):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        store, go = f"sqlite:///{d / 'mlruns.db'}", d / "go"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(go), store], cwd=d, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for code in (job_code, outside_code, outside_code)]
        time.sleep(5)   # all three have imported MLflow and wait
        go.touch()
        (out, errs), *_ = [p.communicate(timeout=180) for p in procs]
        assert procs[0].returncode == 0, (trial, errs[-3000:])
        run = MlflowClient(store).get_run(out.strip())
        assert run.info.status == "FINISHED" and run.data.metrics["m"] == 1.0
