"""Synthetic data from a federated GAN (`model.name: gan`): hospitals train a conditional generator
and discriminator with FedAvg over both, the server never holding a row; its rows are judged by
"train on synthetic, test on real", and drawn from the registered generator by `consortium sample`."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, run_cli

GAN = CONFIGS / "gan_breast_cancer.yaml"


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    import os

    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    work = tmp_path_factory.mktemp("gan")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    old = os.environ.get("CONSORTIUM_HOME")
    os.environ["CONSORTIUM_HOME"] = str(work / ".consortium")
    try:
        result = run_job(load_job(GAN, [f"tracking.uri={uri}"]))
    finally:
        if old is None:
            os.environ.pop("CONSORTIUM_HOME", None)
        else:
            os.environ["CONSORTIUM_HOME"] = old
    return {"result": result, "uri": uri, "dir": work}


def test_the_gans_losses_are_logged_per_round_for_the_pair_and_each_hospital(gan_run):
    result, client = gan_run["result"], MlflowClient(gan_run["uri"])
    run = client.get_run(result.run_id)
    assert run.data.params["federated.engine_ran"] == "inline" and run.data.params["model.name"] == "gan"
    for key in ("train/d_loss", "train/g_loss", "eval/d_loss", "eval/g_loss", "hospital_0/train/d_loss",
                "hospital_4/train/g_loss"):
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, key))
        assert steps == list(range(1, 61)), key
    d = [m.value for m in sorted(client.get_metric_history(result.run_id, "train/d_loss"), key=lambda m: m.step)]
    assert all(np.isfinite(d)) and 0.1 < d[-1] < 2.5   # neither player has won outright


def test_train_on_synthetic_test_on_real_reaches_the_target(gan_run):
    final = gan_run["result"].final
    print(f"\nTSTR: synthetic {final['tstr/synthetic_accuracy']:.4f}, real {final['tstr/real_accuracy']:.4f}")
    assert final["tstr/synthetic_accuracy"] >= 0.90          # the target on breast cancer
    assert final["tstr/real_accuracy"] >= 0.93
    assert final["tstr/synthetic_accuracy"] <= final["tstr/real_accuracy"] + 0.03


def test_a_sample_of_synthetic_rows_is_logged_with_the_datas_columns_and_labels(gan_run):
    result, client = gan_run["result"], MlflowClient(gan_run["uri"])
    path = client.download_artifacts(result.run_id, "synthetic/sample.csv", str(gan_run["dir"]))
    frame = pd.read_csv(path)
    from sklearn.datasets import load_breast_cancer

    names = list(load_breast_cancer().feature_names)
    assert list(frame.columns) == [*names, "target"] and len(frame) == 500
    assert set(frame["target"]) == {"malignant", "benign"}
    # rows in the data's units: each column's synthetic mean within the real range
    real = load_breast_cancer().data
    assert ((frame[names].mean().to_numpy() > real.min(0)) & (frame[names].mean().to_numpy() < real.max(0))).all()


def test_consortium_sample_draws_rows_from_the_registered_generator(gan_run, tmp_path):
    result = gan_run["result"]
    assert result.registered == "models:/breast-cancer-gan/1"
    env = {"CONSORTIUM_HOME": str(tmp_path / ".consortium")}
    args = ["sample", result.registered, "--rows", "300", "--tracking-uri", gan_run["uri"]]
    first = run_cli(*args, str(tmp_path / "a.csv"), cwd=tmp_path, env=env)
    again = run_cli(*args, str(tmp_path / "b.csv"), cwd=tmp_path, env=env)
    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:]
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert len(a) == 300 and a.equals(b)                     # same seed, same rows
    share = (a["target"] == "benign").mean()
    assert 0.5 < share < 0.76, share                         # the consortium's label shares (~0.63)
    other = run_cli(*args[:3], "300", "--seed", "1", "--tracking-uri", gan_run["uri"], str(tmp_path / "c.csv"),
                    cwd=tmp_path, env=env)
    assert other.returncode == 0 and not pd.read_csv(tmp_path / "c.csv").equals(a)


def test_sample_refuses_a_model_that_is_not_a_generator(tmp_path, store):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    run_job(load_job(CONFIGS / "centralized.yaml", [f"tracking.uri={store}", "train.epochs=1",
                                                    "tracking.register_model=plain"]))
    out = run_cli("sample", "models:/plain/1", str(tmp_path / "x.csv"), "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 2 and "is not a generator" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("overrides,match", [
    (["kind=centralized"], "kind federated"),
    (["federated.engine=vectorized"], "GAN's alternating steps"),
    (["federated.crossval=true"], "federated.crossval"),
    (["federated.strategy.name=scaffold", "train.optimizer.name=sgd"], "scaffold"),
])
def test_a_gan_job_refuses_what_it_cannot_do(overrides, match):
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    with pytest.raises(ConfigError, match=match):
        load_job(GAN, overrides)


def test_no_hospital_row_leaves_in_a_gans_messages(store, monkeypatch):
    """The GAN's replies (both networks' weights and their losses) carry none of a hospital's rows."""
    from flwr.app import ArrayRecord, MetricRecord

    from clients.hospitals import hospital_share
    from orchestrator.jobs.federated.inline import InlineGrid
    from orchestrator.jobs.plan import plan_data
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    sent = []
    deliver = InlineGrid._deliver
    monkeypatch.setattr(InlineGrid, "_deliver", lambda self, msg: sent.append(deliver(self, msg)) or sent[-1])
    job = load_job(GAN, [f"tracking.uri={store}", "federated.rounds=2", "tracking.register_model=null"])
    run_job(job)
    blob = io.BytesIO()
    for m in sent:
        for record in m.content.values():
            if isinstance(record, ArrayRecord):
                for a in record.values():
                    blob.write(np.ascontiguousarray(a.numpy(), dtype=np.float32).tobytes())
            elif isinstance(record, MetricRecord):
                blob.write(np.asarray([v for v in record.values() if isinstance(v, (int, float))],
                                      dtype=np.float32).tobytes())
    data = blob.getvalue()
    schema = plan_data(job).schema
    rows = [np.asarray(hospital_share(job, schema, i, 5)[1].X_train, dtype=np.float32) for i in range(5)]
    assert not [i for X in rows for i, row in enumerate(X) if row[:4].tobytes() in data]
