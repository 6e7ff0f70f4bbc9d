"""The primer's toolbox end to end: real runs into a real MLflow store, one per shipped family."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


def _run(name: str, store: str, *overrides: str):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    return run_job(load_job(CONFIGS / name, [f"tracking.uri={store}", *overrides]))


def _history(store, run_id, key):
    return [m.value for m in sorted(MlflowClient(store).get_metric_history(run_id, key), key=lambda m: m.step)]


def test_the_primers_2_2_1_network_learns_xor(store):
    result = _run("xor_2_2_1.yaml", store)
    losses = _history(store, result.run_id, "train/loss")
    print(f"\nxor 2-2-1: eval/accuracy={result.final['eval/accuracy']:.3f} loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert result.final["eval/accuracy"] >= 0.95
    assert losses[-1] < losses[0] / 3
    model = __import__("mlflow").pytorch.load_model(result.model_uri)
    assert [tuple(p.shape) for p in model.parameters()] == [(2, 2), (2,), (1, 2), (1,)]  # 2-2-1


def test_regression_on_diabetes_logs_mse_mae_r2_in_target_units(store):
    result = _run("diabetes_regression.yaml", store, "train.epochs=30")
    print(f"\ndiabetes: r2={result.final['eval/r2']:.3f} mae={result.final['eval/mae']:.1f}")
    assert result.final["eval/r2"] > 0.3
    assert 20 < result.final["eval/mae"] < 80  # progression units, not standardised ones
    assert len(_history(store, result.run_id, "eval/r2")) == 30
    arts = {a.path for a in MlflowClient(store).list_artifacts(result.run_id, "plots")}
    assert "plots/r2.png" in arts and "plots/confusion_matrix.png" not in arts


@pytest.mark.parametrize("config", ["sequences_lstm.yaml", "sequences_transformer.yaml"])
def test_sequence_models_learn_the_generated_sequences(store, config):
    result = _run(config, store, "train.epochs=8")
    print(f"\n{config}: eval/accuracy={result.final['eval/accuracy']:.3f}")
    assert result.final["eval/accuracy"] > 0.9


def test_early_stopping_stops_and_restores_the_best_epoch(store):
    result = _run("breast_cancer_regularized.yaml", store, "train.early_stopping.patience=3", "train.epochs=60")
    f = result.final
    print(f"\nearly stopping: best epoch {f['early_stopping/best_epoch']:.0f}, "
          f"stopped at {f['early_stopping/stopped_epoch']:.0f}, eval/accuracy={f['eval/accuracy']:.3f}")
    assert 0 < f["early_stopping/stopped_epoch"] < 60
    assert f["early_stopping/stopped_epoch"] - f["early_stopping/best_epoch"] == 3
    assert f["early_stopping/restored"] == 1.0
    val = _history(store, result.run_id, "val/f1_macro")
    assert len(val) == f["early_stopping/stopped_epoch"] and max(val) == pytest.approx(f["early_stopping/best_value"])
    assert f["eval/accuracy"] >= 0.93
    # the logged model is the restored one: it scores the best epoch's eval metrics
    best_eval = _history(store, result.run_id, "eval/accuracy")[int(f["early_stopping/best_epoch"]) - 1]
    assert f["eval/accuracy"] == pytest.approx(best_eval)


def test_permutation_importance_finds_the_feature_that_makes_the_label(store, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    rows = ["a,b,c,signal,e,target"] + [",".join(f"{v:.5f}" for v in x) + f",{int(x[3] > 0)}" for x in X]
    (tmp_path / "synthetic.csv").write_text("\n".join(rows) + "\n")
    result = _run("centralized.yaml", store, "data.source=csv", f"data.path={tmp_path / 'synthetic.csv'}",
                  "train.epochs=15", "tracking.register_model=null")
    client = MlflowClient(store)
    local = client.download_artifacts(result.run_id, "explain/permutation_importance.json", str(tmp_path))
    table = json.loads(open(local).read())
    ranked = [r["feature"] for r in table["features"]]
    print(f"\nimportance: {[(r['feature'], round(r['importance'], 3)) for r in table['features']]}")
    assert ranked[0] == "signal"
    assert table["features"][0]["importance"] > 0.2 > max(abs(r["importance"]) for r in table["features"][1:])
    assert client.get_run(result.run_id).data.tags["explain.top_feature"] == "signal"
    assert "plots/feature_importance.png" in {a.path for a in client.list_artifacts(result.run_id, "plots")}


def test_transfer_learning_fine_tunes_only_the_head_of_a_registered_cnn(store, tmp_path):
    base = _run("digits_cnn_pretrain.yaml", store, "train.epochs=4")
    assert base.registered == "models:/digits-cnn-base/1"
    tuned = _run("transfer_digits.yaml", store)
    print(f"\ntransfer: base eval/accuracy={base.final['eval/accuracy']:.3f} (0-6), "
          f"fine-tuned head on 7-9: {tuned.final['eval/accuracy']:.3f}")
    assert tuned.final["eval/accuracy"] >= 0.9
    import mlflow.pytorch

    source = mlflow.pytorch.load_model("models:/digits-cnn-base/1").state_dict()
    target = mlflow.pytorch.load_model(tuned.registered).state_dict()
    for k, v in source.items():
        if k.startswith(("input.", "body.")):
            assert torch.equal(v, target[k]), f"{k} changed although frozen"
    assert source["head.weight"].shape[0] == 7 and target["head.weight"].shape[0] == 3
    tags = MlflowClient(store).get_run(tuned.run_id).data.tags
    assert tags["lineage.source_model"] == "digits-cnn-base" and tags["lineage.source_version"] == "1"
    assert tags["lineage.source_run_id"] == base.run_id


def test_a_sweep_runs_ray_tune_trials_as_child_runs_and_registers_the_best(store, progress_steps):
    result = _run("sweep_lr.yaml", store, "train.epochs=4", "sweep.space={train.optimizer.lr: [0.001, 0.05]}")
    assert progress_steps.begun[0] == ("trial", 2)   # the progress display: one step per finished trial
    assert [s.done for s in progress_steps.steps if s.unit == "trial"] == [1, 2]
    assert all("eval/loss" in s.note for s in progress_steps.steps), [s.note for s in progress_steps.steps]
    client = MlflowClient(store)
    parent = client.get_run(result.run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    print(f"\nsweep: {len(children)} trials in {result.wall_s:.1f}s, best {parent.data.tags['sweep.best']}")
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "sweep"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["sweep.trial"] for c in children} == {"train.optimizer.lr=0.001", "train.optimizer.lr=0.05"}
    losses = {c.info.run_id: c.data.metrics["eval/loss"] for c in children}
    best = min(losses, key=losses.get)
    assert parent.data.tags["sweep.best_run_id"] == best
    assert parent.data.metrics["best/eval/loss"] == pytest.approx(losses[best])
    assert result.registered == "models:/sweep-lr-best/1"
    assert client.get_model_version("sweep-lr-best", "1").run_id == best


def test_a_federated_sweep_runs_whole_federated_jobs_as_trials_and_registers_the_best(store):
    """2x2 grid over FedProx's mu and the learning rate: every trial a federated job in its Tune
    trial's process (never Flower's simulation, which would shut Tune's Ray down), every round reported."""
    result = _run("sweep_federated.yaml", store)
    client = MlflowClient(store)
    parent = client.get_run(result.run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["sweep.trial"] for c in children} == {
        f"federated.strategy.mu={mu}, train.optimizer.lr={lr}" for mu in (0.0, 0.1) for lr in (0.01, 0.05)}
    for c in children:
        assert c.data.tags["kind"] == "federated" and c.data.params["federated.engine_ran"] in ("inline", "vectorized")
        assert c.data.params["federated.strategy.mu"] in ("0.0", "0.1")
        rounds = [m.step for m in client.get_metric_history(c.info.run_id, "central/loss")]
        assert sorted(set(rounds)) == list(range(0, 7)), rounds   # round 0 and every round after
    losses = {c.info.run_id: c.data.metrics["central/loss"] for c in children}
    best = min(losses, key=losses.get)
    assert parent.data.tags["sweep.best_run_id"] == best
    assert parent.data.metrics["best/central/loss"] == pytest.approx(losses[best])
    assert client.get_model_version("sweep-federated-best", "1").run_id == best


def test_a_federated_sweep_refuses_an_engine_that_cannot_run_inside_a_tune_trial():
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    for override in ("federated.parallel=true", "federated.engine=simulation"):
        with pytest.raises(ConfigError, match="cannot run inside one"):
            load_job(CONFIGS / "sweep_federated.yaml", [override])


def test_federated_regression_pools_exact_metrics_from_hospital_sums(store):
    result = _run("diabetes_regression.yaml", store, "kind=federated", "federated.partition.name=iid",
                  "federated.num_clients=3", "federated.rounds=4", "train.epochs=2", "train.schedule.warmup_epochs=0",
                  "federated.engine=inline")
    print(f"\nfederated diabetes: eval/r2={result.final['eval/r2']:.3f} central/r2={result.final['central/r2']:.3f}")
    assert result.final["central/r2"] > 0.2 and result.final["eval/r2"] > 0.2
    keys = MlflowClient(store).get_run(result.run_id).data.metrics
    assert {"hospital_0/eval/r2", "hospital_2/eval/mae", "eval/mse"} <= set(keys)
