"""Ray Train jobs for real: a local runtime, a 2-node loopback cluster, a killed worker, a killed
driver resumed, a submitted Ray job, and Flower sharing the process without sharing the runtime."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, free_port as _free_port, run_cli

pytestmark = pytest.mark.integration
DDP = CONFIGS / "cluster_ddp.yaml"
RAY = Path(sys.executable).with_name("ray")
# Epochs long enough (~1 s each on 2 cores) to interrupt a run in the middle.
EPOCHS = 10
SLOW = ["model.channels=[64,128]", f"train.epochs={EPOCHS}", "tracking.register_model=null"]


def _wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _runs(uri: str, experiment: str = "consortium"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _epochs_logged(uri: str) -> int:
    runs = _runs(uri)
    if not runs:
        return 0
    history = MlflowClient(uri).get_metric_history(runs[0].info.run_id, "eval/accuracy")
    return max((m.step for m in history), default=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node on 127.0.0.1, 1 CPU each; both stopped (by our pids) afterwards."""
    logs = tmp_path_factory.mktemp("cluster")
    port, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="crt-", dir="/tmp")  # short: Ray's socket paths have a length limit
    # started as .venv/bin/ray from a shell where the venv is not activated: its PATH has no Python
    # with our packages on it (the submitted job must find the head's own)
    path = ":".join(p for p in os.environ["PATH"].split(":") if Path(p).resolve() != RAY.parent.resolve())
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": path}
    env.pop("VIRTUAL_ENV", None)
    # nor the PYTHONPATH an in-process simulation earlier in this session exported (the driver's
    # sys.path, venv included: with it, any Python on the cluster would find our packages)
    env.pop("PYTHONPATH", None)
    # a user's multi-node cluster: not the loopback-only setting a local Consortium runtime uses
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    procs = []
    try:
        head_log = open(logs / "head.log", "w")
        procs.append(subprocess.Popen(
            [str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *common],
            stdout=head_log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait_for(lambda: "Ray runtime started" in (logs / "head.log").read_text(), 120, "the head node")
        worker_log = open(logs / "worker.log", "w")
        procs.append(subprocess.Popen(
            [str(RAY), "start", f"--address=127.0.0.1:{port}", *common],
            stdout=worker_log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait_for(lambda: "Ray runtime started" in (logs / "worker.log").read_text(), 120, "the second node")
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_local_runtime_ddp_matches_centralized_and_registers_one_run(store, progress_steps):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    t0 = time.perf_counter()
    ray_result = run_job(load_job(DDP, [f"tracking.uri={store}"]))
    ray_wall = time.perf_counter() - t0
    # the driver followed the workers' epochs (the console's progress display is fed this)
    assert progress_steps.begun[0] == ("epoch", 5)
    done = [s.done for s in progress_steps.steps if s.unit == "epoch"]
    assert done and done == sorted(set(done)) and done[-1] == 5, done
    assert "eval/accuracy" in progress_steps.steps[-1].metrics
    central = run_job(load_job(DDP, [f"tracking.uri={store}", "kind=centralized"]))
    acc, base = ray_result.final["eval/accuracy"], central.final["eval/accuracy"]
    print(f"\ncluster_ddp: ray 2 workers eval/accuracy={acc:.4f} (wall {ray_wall:.1f}s), centralized={base:.4f}")
    assert acc >= 0.93
    assert abs(acc - base) <= 0.01
    client = MlflowClient(store)
    (run,) = [r for r in _runs(store) if r.data.tags["kind"] == "ray"]  # exactly one run for the job
    assert run.info.status == "FINISHED" and run.data.tags["ray.num_nodes"] == "1"
    for key in ("eval/accuracy", "train/loss", "perf/samples_per_s", "time/epoch_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4, 5], key
    assert ray_result.registered is not None and ray_result.registered.startswith("models:/digits-cnn/")
    version = ray_result.registered.rsplit("/", 1)[1]
    assert client.get_model_version("digits-cnn", version).run_id == run.info.run_id


def test_two_node_cluster_places_one_worker_on_each_node(cluster, store):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    result = run_job(load_job(DDP, [f"tracking.uri={store}", f"ray.address={cluster['address']}",
                                    "train.epochs=2", "tracking.register_model=null"]))
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray.num_nodes"] == "2", run.data.tags
    assert len(set(run.data.tags["ray.worker_nodes"].split(","))) == 2
    assert result.final["eval/accuracy"] > 0.8


def test_a_federated_simulation_on_the_cluster_runs_hospitals_on_both_nodes(cluster, store):
    """`ray.address` for a federated job: Flower's Ray backend joins the cluster, its pool sized per
    node (1 CPU each, 1 per hospital actor), so the hospitals' actors run on both nodes."""
    from ray.util.state import list_actors

    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    result = run_job(load_job(CONFIGS / "hospitals_fedavg.yaml", [
        f"tracking.uri={store}", f"ray.address={cluster['address']}", "federated.num_clients=4",
        "federated.rounds=3", "tracking.register_model=null", "explain.enabled=false"]))
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["federated.engine_ran"] == "simulation"
    assert "ray.address" in run.data.params["federated.engine_reason"]
    assert result.final["central/accuracy"] > 0.85
    actors = list_actors(address=cluster["address"], filters=[("class_name", "=", "ClientAppActor")],
                         detail=True, limit=1000, raise_on_missing_output=False)
    nodes = {a.node_id for a in actors}
    assert len(nodes) == 2, [(a.actor_id, a.node_id, a.state) for a in actors]


def test_submit_runs_the_job_on_a_running_head_and_exits_with_its_status(cluster, tmp_path):
    out = run_cli("submit", str(DDP), "train.epochs=2", "--address", cluster["dashboard"], cwd=tmp_path,
                  env=cluster["env"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "SUCCEEDED" in out.stdout
    (run,) = _runs(f"sqlite:///{tmp_path / 'mlruns.db'}")  # the job wrote into the submitter's store
    assert run.info.status == "FINISHED" and run.data.tags["ray.address"] == "auto"
    assert run.data.tags["registered_model"].startswith("models:/digits-cnn/")


def test_submit_to_a_cluster_whose_python_lacks_our_packages_says_so_and_exits_2(cluster, tmp_path):
    bare = tmp_path / "bare"  # a Python that has none of our packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    out = run_cli("submit", str(DDP), "train.epochs=1", "--address", cluster["dashboard"],
                  "--python", str(bare / "bin" / "python"), cwd=tmp_path, env=cluster["env"])
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "lacks Consortium's packages (torch, mlflow, flwr, ray, typer" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


# (a real local runtime; more workers than fit is the same check, unit-tested in test_ray_config)
@pytest.mark.parametrize("override,expected", [
    ("ray.use_gpu=true", "the cluster has no GPU"),
])
def test_a_job_the_local_runtime_cannot_place_exits_2_before_any_run(tmp_path, override, expected):
    out = run_cli("run", str(DDP), override, cwd=tmp_path, timeout=180)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert expected in out.stderr.replace("\n", " ") and "Traceback" not in out.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_submit_to_an_address_without_a_job_server_exits_2(tmp_path):
    out = run_cli("submit", str(DDP), "--address", f"http://127.0.0.1:{_free_port()}", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--address" in out.stderr and "Traceback" not in out.stderr


def _ray_train_workers(pid: int):
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def _start_slow_run(tmp_path: Path) -> tuple[str, subprocess.Popen]:
    """`consortium run` in its own process, returned once two epochs are in MLflow."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(DDP), *SLOW], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _epochs_logged(uri) >= 2, 240, "two epochs")
    except BaseException:
        proc.kill()
        raise
    return uri, proc


def test_a_killed_worker_is_replaced_then_a_stopped_driver_resumes_into_the_same_run(tmp_path):
    """One run, two faults: a Ray Train worker SIGKILLed mid-run is replaced and training goes on from
    the last checkpoint; then the driver is stopped (SIGTERM) and `consortium resume` finishes the run."""
    uri, proc = _start_slow_run(tmp_path)
    client = MlflowClient(uri)
    try:
        workers = _wait_for(lambda: _ray_train_workers(proc.pid), 30, "the Ray Train worker processes")
        workers[-1].kill()  # SIGKILL one training worker mid-run
        (run,) = _runs(uri)
        _wait_for(lambda: client.get_metric_history(run.info.run_id, "ray/resumed_from_epoch"), 240,
                  "the replacement workers to resume from a checkpoint", every=0.2)
        proc.send_signal(signal.SIGTERM)  # now the driver is stopped: run KILLED, checkpoints kept
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-3000:]
    (run,) = _runs(uri)
    assert run.info.status == "KILLED"
    recovered = client.get_metric_history(run.info.run_id, "ray/resumed_from_epoch")
    assert recovered[0].value >= 1  # the new worker group started from a checkpoint, not from scratch
    stopped_at = _epochs_logged(uri)
    assert stopped_at < EPOCHS

    out = run_cli("resume", run.info.run_id, cwd=tmp_path)

    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (after,) = _runs(uri)
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")}
    assert steps == set(range(1, EPOCHS + 1))  # continuous: no epoch missing
    resumed = client.get_metric_history(run.info.run_id, "ray/resumed_from_epoch")
    assert len(resumed) >= 2 and 1 <= resumed[-1].value <= stopped_at
    assert after.data.metrics["eval/accuracy"] > 0.85


def test_flower_and_ray_train_jobs_run_one_after_the_other_in_one_process(store):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    small_fl = [f"tracking.uri={store}", "federated.rounds=2", "federated.num_clients=3",
                "tracking.register_model=null", "tracking.log_model=false"]
    first = run_job(load_job(CONFIGS / "hospitals_fedavg.yaml", small_fl))
    # the Ray job also runs the toolbox's training controls on its workers
    middle = run_job(load_job(DDP, [f"tracking.uri={store}", "train.epochs=4", "tracking.log_model=false",
                                    "model.batchnorm=true", "train.schedule.name=cosine", "train.grad_clip=1.0",
                                    "train.class_weights=balanced", "train.early_stopping.enabled=true",
                                    "train.early_stopping.patience=1", "train.early_stopping.metric=val/accuracy",
                                    "train.early_stopping.mode=max", "explain.enabled=false"]))
    last = run_job(load_job(CONFIGS / "hospitals_fedavg.yaml", small_fl))
    client = MlflowClient(store)
    assert [client.get_run(r.run_id).info.status for r in (first, middle, last)] == ["FINISHED"] * 3
    assert first.final["eval/accuracy"] == last.final["eval/accuracy"]
    lrs = [m.value for m in sorted(client.get_metric_history(middle.run_id, "train/lr"), key=lambda m: m.step)]
    assert lrs[0] > lrs[-1] and len(client.get_metric_history(middle.run_id, "val/accuracy")) == len(lrs)
    assert middle.final["eval/accuracy"] > 0.8 and "eval/f1_macro" in middle.final


def test_a_federated_job_on_an_address_nobody_answers_at_exits_2_before_any_run(tmp_path):
    out = run_cli("run", str(CONFIGS / "hospitals_fedavg.yaml"), f"ray.address=127.0.0.1:{_free_port()}",
                  f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", cwd=tmp_path)
    assert out.returncode == 2 and "ray.address" in out.stderr and "nothing answers" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "mlruns.db").exists()


def test_the_driver_logs_what_rank_zero_reports_and_never_imports_mlflow(tmp_path):
    """Rank 0 sends its epochs to the driver (`jobs.ray.inbox`); through `consortium run` the driver
    hands them to its tracking process, so neither the workers nor the driver import MLflow and
    the workers never need to reach the store. With tracking off the driver still holds every epoch."""
    import re

    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    untracked = run_job(load_job(DDP, ["tracking.enabled=false", "tracking.register_model=null", "train.epochs=2"]))
    assert [s for s, _ in untracked.history["eval/accuracy"]] == [1, 2]   # MLflow was nowhere to be written to

    env = {**os.environ, "CONSORTIUM_HOME": str(tmp_path / ".consortium")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator.cli", "run", str(DDP),
                           "train.epochs=2", "tracking.register_model=null"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not any(re.search(r"\|\s+mlflow$", line.rstrip()) for line in proc.stderr.splitlines())
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (run,) = _runs(uri)
    client = MlflowClient(uri)
    assert run.info.status == "FINISHED" and run.data.tags["ray.num_nodes"] == "1"
    for key in ("eval/accuracy", "train/loss", "time/epoch_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    # Ray Train's folder is named before the run has an id, and the run records it (resume reads it)
    storage = Path(run.data.tags["ray.storage"])
    assert storage.is_dir() and storage.name != run.info.run_id
