"""A team's tracking server for real: PostgreSQL (Debian's package, initdb into a temp dir, on
127.0.0.1), `consortium server` on it, a federated job and a Ray job logging through it, a database
restart in the middle of a run, and four jobs at once."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, free_port, run_cli

pytestmark = pytest.mark.integration


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {name} is missing: scripts/test.sh installs Debian's postgresql")
    return found[-1]


class Postgres:
    """One PostgreSQL cluster in a temp dir, run as the postgres user when we are root."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="consortium-pg-", dir="/tmp"))
        self.data, self.log, self.port = self.dir / "data", self.dir / "pg.log", free_port()
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.uri = f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_pg, *cmd], check=True, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run(_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow")

    def start(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off", "start")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def query(self, sql: str):
        import psycopg

        with psycopg.connect(self.uri) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """PostgreSQL and `consortium server` on it, both stopped by us at the end."""
    work = tmp_path_factory.mktemp("team")
    pg = Postgres()
    server = None
    try:
        pg.init()
        port = free_port()
        env = {**os.environ}
        env.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.monotonic()
        server = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "server", "--backend-store-uri", pg.uri,
             "--artifacts", str(work / "artifacts"), "--port", str(port)],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
        while not any("tracking.uri: " in line for line in lines):
            assert server.poll() is None, "".join(lines)
            assert time.monotonic() - t0 < 120, "consortium server did not come up:\n" + "".join(lines)
            time.sleep(0.2)
        up = time.monotonic() - t0
        import psutil

        tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree) / 2**20
        print(f"\nconsortium server: tracking.uri printed after {up:.1f} s; process tree {rss:.0f} MiB RSS")
        uri = f"http://127.0.0.1:{port}"
        assert f"tracking.uri: {uri}" in "".join(lines)
        yield {"uri": uri, "pg": pg, "work": work, "server": server, "lines": lines}
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C
            server.wait(timeout=60)
        try:
            pg.stop()
        finally:
            shutil.rmtree(pg.dir, ignore_errors=True)
    assert server.returncode == 0, "".join(lines)[-2000:]


def _job(team, name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cwd = team["work"] / name
    cwd.mkdir()
    out = run_cli("run", *args, f"tracking.uri={team['uri']}", cwd=cwd, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # nothing of the run landed beside the job: runs in PostgreSQL, artifacts on the server
    assert not list(cwd.glob("mlruns*")) and not (cwd / "mlartifacts").exists()
    return out


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return run


def test_federated_and_ray_jobs_log_through_the_server_into_postgresql(team):
    client = MlflowClient(team["uri"])
    _job(team, "fed", str(CONFIGS / "hospitals_fedavg.yaml"), "federated.rounds=3", "tracking.experiment=team-fed")
    _job(team, "ray", str(CONFIGS / "cluster_ddp.yaml"), "train.epochs=2", "tracking.experiment=team-ray")

    fed = _only_run(client, "team-fed")
    ray = _only_run(client, "team-ray")
    for run, key, steps in ((fed, "central/accuracy", 3), (ray, "eval/accuracy", 2)):
        assert run.info.status == "FINISHED"
        logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert set(range(1, steps + 1)) <= set(logged) and len(logged) == len(set(logged)), (key, logged)
    fed_hist = client.get_metric_history(fed.info.run_id, "hospital_0/eval/accuracy")
    assert len(fed_hist) == 3
    # artifacts through the server (proxied: the client never saw the artifact folder)
    for run in (fed, ray):
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config" in names, names
        local = client.download_artifacts(run.info.run_id, "config/resolved.yaml", str(team["work"]))
        assert "kind:" in Path(local).read_text()
    assert any((team["work"] / "artifacts").rglob("resolved.yaml"))
    # a registered version of each, readable through the server
    for name, run in (("hospitals-mlp", fed), ("digits-cnn", ray)):
        (version,) = client.search_model_versions(f"name='{name}'")
        assert version.run_id == run.info.run_id
        assert run.data.tags["registered_model"] == f"models:/{name}/{version.version}"
    import mlflow

    mlflow.set_tracking_uri(team["uri"])
    model = mlflow.pyfunc.load_model("models:/hospitals-mlp/1")
    assert model.metadata.get_input_schema().input_names()[0] == "mean radius"
    # and it is all in PostgreSQL
    rows = dict(team["pg"].query("SELECT status, count(*) FROM runs GROUP BY status"))
    assert rows.get("FINISHED", 0) >= 2
    assert team["pg"].query("SELECT count(*) FROM model_versions")[0][0] >= 2


def test_postgresql_restarting_mid_run_loses_no_metric(team):
    client = MlflowClient(team["uri"])
    cwd = team["work"] / "restart"
    cwd.mkdir()
    epochs = 60
    env = {**os.environ, "CONSORTIUM_HOME": str(cwd / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    job = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(CONFIGS / "centralized.yaml"),
                            f"train.epochs={epochs}", "train.batch_size=8", f"tracking.uri={team['uri']}",
                            "tracking.experiment=team-restart"],
                           cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:  # the run is under way: some epochs are in the database
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline
            exp = client.get_experiment_by_name("team-restart")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
                break
            time.sleep(0.2)
        team["pg"].stop()            # the database goes away mid-run ...
        time.sleep(3)
        team["pg"].start()           # ... and comes back
        restarted_at = time.time()
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-3000:]
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.end_time / 1000 > restarted_at, "the job ended before the database restarted"
    for key in ("train/loss", "eval/accuracy", "eval/loss"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps[-1] >= 1 and steps == list(range(steps[0], steps[-1] + 1)), (key, steps)
    last = max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == last  # one value an epoch, none lost
    assert "Traceback" not in output


def test_four_jobs_at_once_against_the_server_all_finish(team):
    client = MlflowClient(team["uri"])
    procs = []
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    for i in range(4):
        cwd = team["work"] / f"concurrent{i}"
        cwd.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "run", str(CONFIGS / "centralized.yaml"), "train.epochs=3",
             f"seed={i}", f"tracking.uri={team['uri']}", "tracking.experiment=team-concurrent",
             "tracking.register_model=team-concurrent"],
            cwd=cwd, env={**env, "CONSORTIUM_HOME": str(cwd / ".consortium")},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n---\n".join(o[-1500:] for o in outputs)
    exp = client.get_experiment_by_name("team-concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    versions = client.search_model_versions("name='team-concurrent'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]


def test_server_refuses_a_database_it_cannot_reach_with_a_clear_error(tmp_path):
    out = run_cli("server", "--backend-store-uri", f"postgresql://mlflow@127.0.0.1:{free_port()}/mlflow",
                  "--port", str(free_port()), cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--backend-store-uri" in out.stderr and "cannot connect" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("server", "--backend-store-uri", "file:///tmp/x", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "expected a database URI" in out.stderr
