"""Several findings per image (model.head multilabel): the metrics against scikit-learn's, pooled
exactly from hospitals' sums, the manifests read as sets of findings, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from orchestrator.core import metrics as M
from orchestrator.core.training import Objective
from orchestrator.spec.errors import DataError
from tests.conftest import CONFIGS


def _labels(rng, n=300, k=4):
    y = (rng.random((n, k)) < [0.5, 0.2, 0.05, 0.7]).astype(np.float32)
    probs = np.clip(y * 0.6 + rng.random((n, k)) * 0.5, 0, 1)
    return y, probs


def test_multilabel_metrics_are_scikit_learns():
    y, probs = _labels(np.random.default_rng(0))
    pred = (probs >= 0.5).astype(int)
    got = M.multilabel(y, probs, ("a", "b", "c", "d"))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))          # subset accuracy
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert got["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    for j, name in enumerate("abcd"):
        assert got[f"auroc_{name}"] == pytest.approx(skm.roc_auc_score(y[:, j], probs[:, j]))
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, average="macro"))


def test_hospitals_sums_pool_to_the_metrics_of_all_their_rows():
    y, probs = _labels(np.random.default_rng(1), n=500)
    pred = probs >= 0.5
    parts = np.split(np.arange(500), [120, 310])
    pooled = M.from_sums(np.sum([M.multilabel_sums(y[p], pred[p]) for p in parts], 0), "multilabel")
    whole = M.from_multilabel_sums(M.multilabel_sums(y, pred))
    assert pooled == pytest.approx(whole)
    # a finding that no hospital's test rows show, nor any prediction, is left out of the macro means
    y[:, 2] = 0
    pred[:, 2] = False
    assert M.from_multilabel_sums(M.multilabel_sums(y, pred))["f1_macro"] == pytest.approx(
        skm.f1_score(y[:, [0, 1, 3]], pred[:, [0, 1, 3]], average="macro"))


def test_the_objective_trains_one_binary_cross_entropy_per_finding():
    out = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    obj = Objective("multilabel", "bce", 3, labels=("x", "y", "z"))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out, y)
    assert float(obj(out, y)) == pytest.approx(float(expected))
    assert obj.predict(out).tolist() == [[1, 0, 1], [0, 1, 1]]
    assert set(obj.scores(out, y)) >= {"accuracy", "auroc", "auroc_x", "auroc_z", "hamming_loss", "f1_micro"}


def test_a_manifests_findings_become_one_output_each(monkeypatch, tmp_path):
    from orchestrator.core.imaging.tables import image_tables
    from orchestrator.spec.loading import load_job

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    job = load_job(CONFIGS / "images_multilabel_findings.yaml", [f"data.path={CONFIGS / 'data' / 'digit_findings'}"])
    tables, schema = image_tables(job)
    assert schema.multilabel and schema.classes == ("even", "large", "round")
    import pandas as pd

    cells = pd.read_csv(CONFIGS / "data" / "digit_findings" / "hospital_b" / "findings.csv")["Finding Labels"]
    y = tables[1].y
    assert y.shape == (400, 3) and y.dtype == np.float32
    for cell, row in zip(cells, y):
        shown = set() if cell == "No Finding" else set(cell.split("|"))
        assert {c for c, v in zip(schema.classes, row) if v} == shown
    assert tables[1].groups is not None   # the Patient ID column: splits by patient
    # data.classes keeps (and orders) a subset of the findings
    kept, schema2 = image_tables(load_job(CONFIGS / "images_multilabel_findings.yaml",
                                          [f"data.path={CONFIGS / 'data' / 'digit_findings'}",
                                           "data.classes=[round,even]"]))
    assert schema2.classes == ("round", "even") and kept[1].y.shape == (400, 2)
    assert (kept[1].y[:, 0] == y[:, 2]).all()


def test_listed_findings_under_a_single_label_head_say_what_to_set(monkeypatch, tmp_path):
    from orchestrator.core.imaging.tables import image_tables
    from orchestrator.spec.loading import load_job

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    args = [f"data.path={CONFIGS / 'data' / 'digit_findings'}", "model.head=softmax"]
    with pytest.raises(DataError) as info:
        image_tables(load_job(CONFIGS / "images_multilabel_findings.yaml", args))
    assert "set model.head: multilabel" in info.value.problems[0] and "hospital_a" in info.value.source
    # set on purpose, the separator keeps each combination as one class
    tables, schema = image_tables(load_job(CONFIGS / "images_multilabel_findings.yaml",
                                           [*args, "data.label_separator=;"]))
    assert not schema.multilabel and "even|large|round" in schema.classes


@pytest.mark.parametrize("extra, says", [
    (["train.class_weights=balanced"], "train.class_weights"),
    (["federated.partition.name=dirichlet", "federated.num_clients=3"], "federated.partition.name: dirichlet"),
    (["federated.engine=vectorized"], "federated.engine: vectorized scores softmax, sigmoid and linear heads"),
    (["train.loss=cross_entropy"], "train.loss: 'cross_entropy'"),
])
def test_what_a_multilabel_job_cannot_combine_with_is_named(extra, says):
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    with pytest.raises(ConfigError) as info:
        load_job(CONFIGS / "images_multilabel_findings.yaml", extra)
    assert any(says in p for p in info.value.problems), info.value.problems


def test_a_table_of_rows_is_not_read_as_findings():
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    with pytest.raises(ConfigError) as info:
        load_job(CONFIGS / "hospitals_fedavg.yaml", ["model.head=multilabel"])
    assert any("model.head: multilabel reads several findings per image" in p for p in info.value.problems)


def test_auto_never_picks_the_vectorized_engine_for_findings():
    from orchestrator.spec.engines import choose_engine
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "images_multilabel_findings.yaml", ["model.dropout=0"])
    assert choose_engine(job)[0] == "inline"
