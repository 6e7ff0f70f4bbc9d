"""Security defaults: YAML is loaded safely, user files are never unpickled, servers bind loopback."""
from __future__ import annotations

import ast
import pickle

import pytest

from orchestrator.spec.errors import ConfigError
from orchestrator.spec.loading import load_job
from tests.conftest import CONFIGS


def test_a_python_object_tag_is_rejected_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "job.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nkind: centralized\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(config)
    assert not marker.exists()


def test_reading_user_data_never_unpickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on user input")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    rows = "\n".join(f"{i},{i * 2 % 7},{i % 2}" for i in range(60))
    (tmp_path / "data.csv").write_text("a,b,target\n" + rows + "\n")
    from orchestrator.jobs.plan import plan_data

    job = load_job(CONFIGS / "centralized.yaml", ["data.source=csv", f"data.path={tmp_path / 'data.csv'}"])
    plan = plan_data(job)
    assert plan.num_features == 2 and plan.num_classes == 2
    # a pickle disguised as a CSV is a parse error, never loaded as objects
    (tmp_path / "evil.csv").write_bytes(pickle.dumps({"x": 1}))
    from orchestrator.spec.errors import DataError

    job = load_job(CONFIGS / "centralized.yaml", ["data.source=csv", f"data.path={tmp_path / 'evil.csv'}"])
    with pytest.raises(DataError):
        plan_data(job)


def test_checkpoints_are_loaded_with_weights_only():
    import inspect

    from orchestrator.jobs.ray import job as ray_job
    from orchestrator.jobs.ray import worker

    source = inspect.getsource(ray_job) + inspect.getsource(worker)
    assert source.count("torch.load(") == source.count("weights_only=True") >= 2


def test_the_local_ray_runtime_listens_on_loopback_only(tmp_path):
    """Every server socket of the runtime a job starts (GCS, raylet, agents, workers) is on 127.0.0.1."""
    import subprocess
    import sys

    probe = (
        "import psutil, ray\n"
        "from orchestrator.jobs.runtime import prepare_environment, ray_init_args\n"
        "prepare_environment()\n"
        "ray.init(**ray_init_args())\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"
        "pids = {c.pid for c in psutil.Process().children(recursive=True)} | {psutil.Process().pid}\n"
        "ips = {c.laddr.ip for c in psutil.net_connections('inet') if c.status == 'LISTEN' and c.pid in pids}\n"
        "print(sorted(ips), ray.nodes()[0]['NodeManagerAddress'])\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_")}
    env["CONSORTIUM_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    ips, node = ast.literal_eval(line.rsplit(" ", 1)[0]), line.rsplit(" ", 1)[1]
    assert node == "127.0.0.1"
    assert ips and set(ips) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, ips


def test_the_mlflow_ui_binds_loopback():
    import inspect

    from orchestrator.tracking import ui

    assert '"--host", "127.0.0.1"' in inspect.getsource(ui.start)  # served and probed in test_compare_and_ui
