"""MLflow in a process of its own (`orchestrator.tracking.sidecar`), as `consortium run` uses it: the
same run as in-process logging, the job's process never importing MLflow, a job killed outright
still leaving its run KILLED with what it sent, and new SQLite stores copied from a template."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, run_cli

JOB = str(CONFIGS / "hospitals_fedavg.yaml")


def _values(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("time/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_a_run_logged_from_the_tracking_process_equals_one_logged_in_process(tmp_path):
    """Every metric of every round, the params, the figures and the registered model: the same
    whichever process writes them. The job's own process never imports MLflow (-X importtime)."""
    runs = {}
    for mode in ("1", "0"):
        work = tmp_path / f"mode{mode}"
        work.mkdir()
        args = ["run", JOB, "federated.rounds=3", "--json"]
        env = {"CONSORTIUM_TRACKING_PROCESS": mode}
        full_env = {**os.environ, "CONSORTIUM_HOME": str(work / ".consortium"), **env}
        full_env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator.cli", *args], cwd=work,
                              env=full_env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
        run = client.search_runs(["1"])[0]
        console = Path(client.download_artifacts(run.info.run_id, "logs/console.txt", str(work))).read_text()
        imported_mlflow = any(re.search(r"\|\s+mlflow$", line.rstrip()) for line in (proc.stderr + console).splitlines())
        assert imported_mlflow == (mode == "0"), mode   # -X importtime traces this process only
        runs[mode] = (client, run)
    (c1, r1), (c0, r0) = runs["1"], runs["0"]
    assert r1.info.status == r0.info.status == "FINISHED"
    assert r1.data.params == {k: v for k, v in r0.data.params.items()}
    assert {k: v for k, v in r1.data.tags.items() if not k.startswith(("mlflow.", "federated.checkpoints"))} == \
           {k: v for k, v in r0.data.tags.items() if not k.startswith(("mlflow.", "federated.checkpoints"))}
    assert _values(c1, r1.info.run_id) == _values(c0, r0.info.run_id)
    assert len(_values(c1, r1.info.run_id)["eval/accuracy"]) == 3

    def files(client, run_id, path=""):
        out = set()
        for f in client.list_artifacts(run_id, path):
            out |= files(client, run_id, f.path) if f.is_dir else {f.path}
        return out

    assert files(c1, r1.info.run_id) == files(c0, r0.info.run_id)
    assert {"plots/confusion_matrix.png", "config/resolved.yaml", "logs/console.txt"} <= files(c1, r1.info.run_id)
    assert r1.data.tags["registered_model"] == "models:/hospitals-mlp/1"
    import mlflow.pyfunc

    mlflow.set_tracking_uri(c1.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/hospitals-mlp/1")
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame.drop(columns="target").head(5)
        assert len(model.predict(frame)) == 5
    finally:
        mlflow.set_tracking_uri(None)


def test_a_job_killed_outright_leaves_its_run_killed_with_what_it_sent(tmp_path):
    """SIGKILL to the job's process (no Ctrl-C handler runs): the tracking process sees the socket
    close, writes what it was sent and ends the run KILLED rather than leaving it RUNNING."""
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium"), "CONSORTIUM_TRACKING_PROCESS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", JOB, "federated.rounds=100000",
                             "tracking.register_model=null"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "mlruns.db"
    deadline = time.monotonic() + 180
    steps = 0
    while time.monotonic() < deadline and steps < 3:
        time.sleep(0.5)
        try:
            with sqlite3.connect(db) as con:
                steps = con.execute("SELECT COUNT(DISTINCT step) FROM metrics WHERE key = 'eval/accuracy'").fetchone()[0]
        except sqlite3.Error:
            pass
    assert steps >= 3, "the run never logged three rounds"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs(["1"])[0]
    deadline = time.monotonic() + 60
    while run.info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
        run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run.info.run_id, "eval/accuracy")) >= steps
    assert "config/resolved.yaml" in {f.path for f in client.list_artifacts(run.info.run_id, "config")}


def test_a_new_sqlite_store_is_a_copy_of_an_empty_one_mlflow_made(tmp_path, monkeypatch):
    """The first new store on a machine is kept as a template; the next ones are copies with the
    same schema, whose Default experiment points at ./mlruns/0 of their own directory."""
    from orchestrator.tracking import stores

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
    monkeypatch.chdir(first)
    stores.first_touch(f"sqlite:///{first / 'mlruns.db'}")
    assert stores._template().is_file()
    monkeypatch.chdir(second)
    client = stores.first_touch(f"sqlite:///{second / 'mlruns.db'}")

    def schema(db):
        with sqlite3.connect(db) as con:
            return sorted(con.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str)

    assert schema(second / "mlruns.db") == schema(first / "mlruns.db")
    default = client.get_experiment("0")
    assert default.name == "Default" and default.artifact_location == str(second / "mlruns" / "0")
    assert abs(default.creation_time / 1000 - time.time()) < 60
    exp = client.create_experiment("e")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}


@pytest.mark.parametrize("mode", ["1"])
def test_a_data_error_leaves_no_store_behind(tmp_path, mode):
    """The tracking process starts before the data is read, but touches the store only after."""
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    proc = run_cli("run", JOB, "data.source=csv", f"data.path={bad}", cwd=tmp_path,
                   env={"CONSORTIUM_TRACKING_PROCESS": mode})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_a_tracking_process_that_dies_stops_the_job_with_a_message(tmp_path):
    """The tracking process killed mid-run: the job stops at its next round (not after all of them)
    and says what happened, without a traceback; what was written before stays."""
    import psutil

    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium"), "CONSORTIUM_TRACKING_PROCESS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", JOB, "federated.rounds=100000",
                             "tracking.register_model=null"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        db, steps, deadline = tmp_path / "mlruns.db", 0, time.monotonic() + 180
        while time.monotonic() < deadline and steps < 3:
            time.sleep(0.5)
            try:
                with sqlite3.connect(db) as con:
                    steps = con.execute("SELECT COUNT(DISTINCT step) FROM metrics "
                                        "WHERE key = 'eval/accuracy'").fetchone()[0]
            except sqlite3.Error:
                pass
        assert steps >= 3, "the run never logged three rounds"
        (tracking,) = [p for p in psutil.Process(proc.pid).children()
                       if "orchestrator.tracking.sidecar" in " ".join(p.cmdline())]
        tracking.kill()
        out, errs = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + errs
    assert "the tracking process" in errs and "ended unexpectedly" in errs, errs
    assert "the MLflow run stays RUNNING" in errs, errs   # not "marked FAILED": nobody could mark it
    assert "Traceback" not in errs
    assert len(MlflowClient(f"sqlite:///{db}").get_metric_history(
        MlflowClient(f"sqlite:///{db}").search_runs(["1"])[0].info.run_id, "eval/accuracy")) >= 3
