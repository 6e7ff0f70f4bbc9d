"""Security defaults: YAML is loaded safely, user files are never unpickled, servers bind loopback."""
from __future__ import annotations

import pickle

import pytest

from orchestrator.errors import ConfigError
from orchestrator.loading import load_job
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
    from orchestrator.plan import plan_data

    job = load_job(CONFIGS / "centralized.yaml", ["data.source=csv", f"data.path={tmp_path / 'data.csv'}"])
    plan = plan_data(job)
    assert plan.num_features == 2 and plan.num_classes == 2
    # a pickle disguised as a CSV is a parse error, never loaded as objects
    (tmp_path / "evil.csv").write_bytes(pickle.dumps({"x": 1}))
    from orchestrator.errors import DataError

    job = load_job(CONFIGS / "centralized.yaml", ["data.source=csv", f"data.path={tmp_path / 'evil.csv'}"])
    with pytest.raises(DataError):
        plan_data(job)


def test_checkpoints_are_loaded_with_weights_only():
    import inspect

    from orchestrator import ray_job

    source = inspect.getsource(ray_job)
    assert source.count("torch.load(") == source.count("weights_only=True")


def test_servers_bind_the_loopback_address_by_default():
    import inspect

    from orchestrator import ui
    from orchestrator.runtime import ray_init_args

    assert ray_init_args()["_node_ip_address"] == "127.0.0.1"
    assert ray_init_args()["include_dashboard"] is False
    assert '"--host", "127.0.0.1"' in inspect.getsource(ui.start)
