"""Cross-site validation and local-only baselines, the parts that need no federation: the mean over
hospitals, the matrix's summaries and labels, and the job spec's refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.metrics import site_mean
from orchestrator.jobs.crossval import headline_metric, means, model_label
from orchestrator.spec.errors import ConfigError
from orchestrator.spec.loading import load_job

ROOT = Path(__file__).resolve().parents[2]


def test_the_mean_over_hospitals_counts_each_once_and_leaves_out_undefined_values():
    sites = [{"accuracy": 0.9, "auroc": float("nan"), "num_examples": 1000},
             {"accuracy": 0.5, "auroc": 0.7, "num_examples": 10}]
    assert site_mean(sites) == {"accuracy": pytest.approx(0.7), "auroc": pytest.approx(0.7)}
    assert site_mean([]) == {}


def test_matrix_summaries_are_per_model_over_the_hospitals_that_answered():
    matrix = {"a": {"global": {"accuracy": 1.0, "num_examples": 5}, "local_a": {"accuracy": 0.5}},
              "b": {"global": {"accuracy": 0.0, "num_examples": 5}}}
    assert means(matrix) == {"global": {"accuracy": 0.5}, "local_a": {"accuracy": 0.5}}
    assert headline_metric(matrix) == "accuracy"
    assert headline_metric({"a": {"m": {"mse": 1.0, "r2": 0.2}}}) == "r2"
    assert np.isnan(means({"a": {"m": {"accuracy": float("nan")}}})["m"].get("accuracy", float("nan")))


@pytest.mark.parametrize("uri,label", [("models:/heart/3", "heart_v3"), ("runs:/0123456789abcdef/model", "run_01234567"),
                                       ("models:/m-a426ef69906c46c4b", "model_a426ef69")])
def test_model_labels_are_short_column_names(uri, label):
    assert model_label(uri) == label


@pytest.mark.parametrize("overrides,key", [
    (["federated.engine=simulation"], "federated.engine"),
    (["federated.engine=deployment", "federated.superlink=127.0.0.1:9093"], "federated.engine"),
    (["federated.faults.hospitals=[0]"], "federated.faults"),
    (["federated.dp.mode=local"], "federated.dp"),
    (["train.early_stopping.enabled=true"], "train.early_stopping"),
])
def test_kind_local_refuses_what_only_a_federation_does(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_job(ROOT / "configs/heart_local.yaml", overrides)


def test_crossval_is_refused_beside_secure_aggregation_with_what_to_do_instead():
    with pytest.raises(ConfigError, match="consortium crossval MODEL_URI CONFIG"):
        load_job(ROOT / "configs/fl_secagg.yaml", ["federated.crossval=true"])


@pytest.mark.parametrize("config,overrides,match", [
    ("fl_secagg.yaml", ["federated.personalize.epochs=2"], "federated.personalize"),
    ("fl_dp.yaml", ["federated.personalize.share_models=true"], "fine-tuned without DP noise"),
    ("heart_local.yaml", ["federated.personalize.epochs=2"], "federated.personalize"),
])
def test_personalization_is_refused_where_it_would_break_a_promise(config, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_job(ROOT / "configs" / config, overrides)


def test_the_best_round_counts_patience_in_evaluated_rounds_and_keeps_the_best_models_weights():
    from orchestrator.core.protocol import from_state
    from orchestrator.jobs.federated.stopping import BestRound

    watch = BestRound("site_mean/accuracy", mode="max", min_delta=0.01, patience=2)
    seen = [0.70, 0.80, 0.805, 0.79]   # 0.805 is within min_delta: no improvement
    stops = [watch.see(r, {"site_mean/accuracy": v}, from_state({"w": np.full(2, float(r), np.float32)}))
             for r, v in enumerate(seen, start=1)]
    assert stops == [False, False, False, True] and watch.round == 2 and watch.stopped == 4
    assert watch.best_arrays()["w"].numpy().tolist() == [2.0, 2.0]


def test_round_stopping_watches_only_what_the_server_sees():
    with pytest.raises(ConfigError, match="eval/..., central/... or site_mean/"):
        load_job(ROOT / "configs/heart_crossval.yaml", ["federated.early_stopping.metric=val/loss"])
    with pytest.raises(ConfigError, match="federated.early_stopping"):
        load_job(ROOT / "configs/heart_local.yaml", ["federated.early_stopping.patience=2"])


@pytest.mark.parametrize("overrides,match", [
    (["federated.personalize.method=fedbn"], "model.batchnorm: true"),
    (["federated.personalize.method=fedper", "model.name=logistic"], "a head alone"),
    (["federated.personalize.method=ditto", "federated.strategy.name=scaffold", "train.optimizer.name=sgd"],
     "does not combine with strategy scaffold"),
    (["federated.personalize.method=fedrep", "federated.engine=vectorized"], "cannot keep each hospital's own part"),
])
def test_stateful_personalization_is_refused_where_it_cannot_work(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_job(ROOT / "configs/heart_personalized.yaml", overrides)


def test_the_auto_engine_keeps_stateful_personalization_in_the_inline_engine():
    from orchestrator.spec.engines import choose_engine

    job = load_job(ROOT / "configs/heart_personalized.yaml", ["federated.personalize.method=ditto", "model.dropout=0"])
    assert choose_engine(job)[0] == "inline"
    assert choose_engine(load_job(ROOT / "configs/heart_personalized.yaml", ["model.dropout=0"]))[0] == "vectorized"
