"""The vectorized engine (a round's hospitals trained as one batched computation) against the
inline engine (the same ClientApp called once per hospital): the same final metrics to 1e-4 per
strategy and optimizer, dropout equal in mean over seeds, refusals at validation, and `engine: auto`
saying in the run's params which engine ran and why. Real Flower strategies, real MLflow."""
from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, run_cli

pytestmark = pytest.mark.integration

QUICK = ["tracking.enabled=false", "tracking.register_model=null", "explain.enabled=false", "federated.rounds=3"]


def final(engine: str, *overrides: str) -> dict:
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "hospitals_fedavg.yaml", [*QUICK, f"federated.engine={engine}", *overrides])
    # bytes sent down include the job spec, which names its engine: they differ by those few bytes
    return {k: v for k, v in run_job(job).final.items() if not k.startswith("time/") and not k.endswith("bytes_down")}


CASES = {
    "fedavg-sgd": [],
    "fedprox-sgd-momentum": ["federated.strategy.name=fedprox", "federated.strategy.mu=0.1", "train.optimizer.momentum=0.5"],
    "fedadam-adam": ["federated.strategy.name=fedadam", "train.optimizer.name=adam", "train.optimizer.lr=0.01"],
    "fedyogi-rmsprop": ["federated.strategy.name=fedyogi", "train.optimizer.name=rmsprop", "train.optimizer.lr=0.01",
                        "train.optimizer.momentum=0.5"],
    "fedadagrad-adamw": ["federated.strategy.name=fedadagrad", "train.optimizer.name=adamw", "train.optimizer.lr=0.01",
                         "train.optimizer.weight_decay=0.01"],
    "fedmedian-nesterov": ["federated.strategy.name=fedmedian", "train.optimizer.momentum=0.9", "train.optimizer.nesterov=true"],
    "trimmed_mean-class-weights": ["federated.strategy.name=trimmed_mean", "train.class_weights=balanced"],
    "krum": ["federated.strategy.name=krum"],
    "multi_krum-sampled": ["federated.strategy.name=multi_krum", "federated.fraction_fit=0.6"],
    "scaffold": ["federated.strategy.name=scaffold", "train.epochs=2"],
    "fednova-clipped-schedule": ["federated.strategy.name=fednova", "train.optimizer.momentum=0.5", "train.grad_clip=0.5",
                                 "train.epochs=2", "train.schedule={name: cosine, warmup_epochs: 1}"],
    "drills": ["federated.faults={hospitals: [1, 3], rounds: [2]}",
               "federated.attack={hospitals: [0], kind: sign_flip, factor: 2.0}"],
    "cnn-digits": ["data.source=digits", "model={name: cnn, channels: [4]}", "federated.num_clients=4"],
    "regression": ["data.source=diabetes", "model.head=linear", "train.loss=mse", "federated.partition.name=iid"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_vectorized_engine_gives_the_inline_engines_metrics(case):
    inline, vectorized = final("inline", *CASES[case]), final("vectorized", *CASES[case])
    assert set(inline) == set(vectorized)
    assert any(k.startswith("eval/") for k in inline)
    for key, value in inline.items():
        if isinstance(value, float) and not np.isnan(value):
            assert vectorized[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key


def test_with_dropout_the_engines_agree_in_mean_over_seeds():
    args = ["model={name: mlp, hidden: [32], dropout: 0.3}", "federated.rounds=5"]
    runs = {e: [final(e, *args, f"seed={s}") for s in range(4)] for e in ("inline", "vectorized")}
    loss = {e: np.array([r["central/loss"] for r in rs]) for e, rs in runs.items()}
    acc = {e: np.array([r["central/accuracy"] for r in rs]) for e, rs in runs.items()}
    # not the same masks (vmap draws each hospital's from one generator): dropout is on in both ...
    assert not np.allclose(loss["inline"], loss["vectorized"], rtol=0, atol=1e-5), loss
    # ... and the same distribution: over the same seeds, the same mean to well within a seed's spread
    assert abs(loss["inline"].mean() - loss["vectorized"].mean()) < 0.02, loss
    assert abs(acc["inline"].mean() - acc["vectorized"].mean()) < 0.03, acc


@pytest.mark.parametrize("overrides, named", [
    (["model.batchnorm=true"], "model.batchnorm"),
    (["federated.dp={mode: local, noise_multiplier: 0.5, clipping_norm: 1.0}"], "local DP-SGD"),
    (["federated.secagg={enabled: true}"], "SecAgg+"),
])
def test_what_the_vectorized_engine_cannot_run_is_refused_with_exit_2(overrides, named, tmp_path):
    out = run_cli("validate", str(CONFIGS / "hospitals_fedavg.yaml"), "federated.engine=vectorized", *overrides,
                  cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "federated.engine" in out.stderr and named in out.stderr and "inline" in out.stderr
    assert "Traceback" not in out.stderr


def test_auto_runs_the_shipped_job_vectorized_and_the_params_say_why(store):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "hospitals_fedavg.yaml", [f"tracking.uri={store}", "tracking.register_model=null",
                                                        "tracking.log_model=false", "federated.rounds=2"])
    assert job.federated.engine == "auto"
    result = run_job(job)
    client = MlflowClient(store)
    params = client.get_run(result.run_id).data.params
    assert params["federated.engine"] == "auto" and params["federated.engine_ran"] == "vectorized"
    assert "one machine" in params["federated.engine_reason"]
    # the job read its history from memory (no query per key): what it read is what the store holds
    stored = sorted(m.value for m in client.get_metric_history(result.run_id, "time/round_end_s"))
    assert result.round_ends_s == stored and len(stored) == 2
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/accuracy.png", "plots/loss.png", "plots/hospitals_accuracy.png"} <= artifacts, artifacts


@pytest.mark.parametrize("overrides, engine, why", [
    (["federated.parallel=true"], "simulation", "parallel"),
    (["federated.client_resources={num_cpus: 1, num_gpus: 0.5}"], "simulation", "GPU"),
    (["model.batchnorm=true"], "inline", "batch norm"),
    (["model.dropout=0.2"], "inline", "dropout"),
])
def test_auto_picks_the_engine_the_job_needs(overrides, engine, why):
    from orchestrator.spec.engines import choose_engine
    from orchestrator.spec.loading import load_job

    chosen, reason = choose_engine(load_job(CONFIGS / "hospitals_fedavg.yaml", overrides))
    assert chosen == engine and why in reason
