"""The primer's toolbox from YAML: every model family, head, loss, optimizer and schedule trains;
the metric functions agree with scikit-learn's; training controls do what they say."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from orchestrator.core import metrics as M
from orchestrator.spec.job import JobSpec
from orchestrator.spec.train import ScheduleSpec
from orchestrator.core.models import build_model, parameter_groups, prepare
from orchestrator.core.training import (
    EarlyStopping,
    Objective,
    balanced_weights,
    evaluate,
    lr_factor,
    tensors,
    train_epoch,
    train_epochs,
)


def _job(**sections) -> JobSpec:
    return JobSpec.model_validate({"kind": "centralized", **sections})


def _tabular(n=240, seed=0, task="classification"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32) * 3 + 10
    z = X[:, 0] - X[:, 1] + 0.5 * X[:, 2]
    if task == "regression":
        return X, (40 * z + rng.normal(0, 5, n) + 200).astype(np.float32)
    if task == "multiclass":
        return X, np.digitize(z, np.quantile(z, [1 / 3, 2 / 3])).astype(np.int64)
    return X, (z > np.median(z)).astype(np.int64)


def _sequences(n=240, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.linspace(0, 1, steps)
    X = rng.normal(0, 1, (n, 1)) + np.where(y[:, None] == 1, t, 1 - t) + rng.normal(0, 0.2, (n, steps))
    return X.astype(np.float32), y.astype(np.int64)


def _fit(job: JobSpec, X, y, num_classes, epochs=15):
    model = build_model(job.model, X.shape[1], num_classes)
    prepare(model, X, y, True)
    objective = Objective.of(job, num_classes, None, model)
    Xt, yt = tensors(X, y)
    before = evaluate(model, Xt, yt, objective)["loss"]
    losses = []
    train_epochs(model, Xt, yt, job.train, epochs, seed=0, objective=objective,
                 on_epoch=lambda e, v: losses.append(v))
    return model, objective, before, evaluate(model, Xt, yt, objective), losses


@pytest.mark.parametrize("model", [
    {"name": "logistic"},
    {"name": "mlp", "hidden": [16], "activation": "relu"},
    {"name": "mlp", "hidden": [16, 8], "activation": "sigmoid"},
    {"name": "mlp", "hidden": [16], "activation": "tanh", "dropout": 0.2},
    {"name": "mlp", "hidden": [16], "activation": "gelu", "batchnorm": True},
])
def test_every_tabular_model_learns(model):
    X, y = _tabular()
    job = _job(model=model, train={"optimizer": {"name": "adam", "lr": 0.01}})
    _, _, before, after, losses = _fit(job, X, y, 2)
    assert after["loss"] < before and losses[-1] < losses[0]
    assert after["accuracy"] > 0.85


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "transformer"])
def test_every_sequence_model_learns(name):
    X, y = _sequences()
    job = _job(data={"source": "sequences"}, model={"name": name, "hidden": [16], "heads": 2},
               train={"optimizer": {"name": "adam", "lr": 0.01}})
    _, _, before, after, losses = _fit(job, X, y, 2, epochs=12)
    assert after["loss"] < before / 2 and losses[-1] < losses[0]
    assert after["accuracy"] > 0.9


def test_the_cnn_learns_square_images():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    img = rng.normal(0, 0.3, (200, 8, 8))
    img[y == 1, :, 3:5] += 2.0   # a vertical bar
    img[y == 0, 3:5, :] += 2.0   # a horizontal bar
    job = _job(data={"source": "digits"}, model={"name": "cnn", "channels": [4, 8], "batchnorm": True},
               train={"optimizer": {"name": "adam", "lr": 0.01}})
    _, _, before, after, _ = _fit(job, img.reshape(200, 64).astype(np.float32), y.astype(np.int64), 2, epochs=6)
    assert after["loss"] < before / 2 and after["accuracy"] > 0.95


@pytest.mark.parametrize("head,loss,task", [
    ("softmax", "cross_entropy", "multiclass"),
    ("sigmoid", "bce", "classification"),
    ("linear", "mse", "regression"),
    ("linear", "mae", "regression"),
    ("linear", "huber", "regression"),
])
def test_every_head_and_loss_trains(head, loss, task):
    X, y = _tabular(task=task)
    job = _job(data={"source": "diabetes" if head == "linear" else "breast_cancer"},
               model={"name": "mlp", "hidden": [16], "head": head},
               train={"loss": loss, "optimizer": {"name": "adam", "lr": 0.01}})
    k = 0 if task == "regression" else int(y.max()) + 1
    model, _, before, after, losses = _fit(job, X, y, k, epochs=30)
    assert losses[-1] < losses[0] and after["loss"] < before
    if task == "regression":
        assert after["r2"] > 0.9
        out = model(torch.as_tensor(X[:5])).detach().numpy()[:, 0]
        assert np.abs(out - y[:5]).mean() < 40  # predictions come out in target units
    else:
        assert after["accuracy"] > 0.85


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.05},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    {"name": "adam", "lr": 0.01},
    {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    {"name": "rmsprop", "lr": 0.005},
])
def test_every_optimizer_lowers_the_loss(optimizer):
    X, y = _tabular()
    job = _job(model={"name": "mlp", "hidden": [16]}, train={"optimizer": optimizer})
    _, _, before, after, losses = _fit(job, X, y, 2, epochs=10)
    assert after["loss"] < before and losses[-1] < losses[0]


def test_learning_rate_schedules():
    step = ScheduleSpec(name="step", step_size=3, gamma=0.5)
    assert [lr_factor(step, e, 10) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cosine = ScheduleSpec(name="cosine", min_lr_fraction=0.1)
    assert lr_factor(cosine, 0, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 5, 10) == pytest.approx(0.55)
    assert lr_factor(cosine, 10, 10) == pytest.approx(0.1)
    warm = ScheduleSpec(name="cosine", warmup_epochs=3)
    assert [lr_factor(warm, e, 13) for e in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(ScheduleSpec(), 7, 10) == 1.0


def test_gradient_clipping_bounds_every_step():
    X, y = _tabular()
    torch.manual_seed(0)
    job = _job(model={"name": "logistic"}, train={"optimizer": {"name": "sgd", "lr": 1.0}, "grad_clip": 0.01})
    model = build_model(job.model, 6, 2)  # unscaled inputs: huge raw gradients
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    Xt, yt = tensors(X, y)
    train_epoch(model, opt, Objective.of(job, 2), Xt, yt, [torch.arange(32)], grad_clip=0.01)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(step) <= 0.01 + 1e-6


def test_class_weights_follow_sklearn_and_weight_the_loss():
    counts = np.array([90, 10])
    from sklearn.utils.class_weight import compute_class_weight

    y = np.repeat([0, 1], counts)
    assert balanced_weights(counts) == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 1]), y=y))
    out = torch.randn(8, 2)
    target = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0])
    weighted = Objective("softmax", "cross_entropy", 2, [1.0, 4.0])(out, target)
    expected = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 4.0]))(out, target)
    assert float(weighted) == pytest.approx(float(expected), rel=1e-6)


def test_frozen_layers_stay_fixed_and_batchnorm_statistics_too():
    X, y = _tabular()
    job = _job(model={"name": "mlp", "hidden": [16], "batchnorm": True, "freeze": ["body"]},
               train={"optimizer": {"name": "adam", "lr": 0.05}})
    model = build_model(job.model, 6, 2)
    prepare(model, X, y, True)
    body = {k: v.clone() for k, v in model.body.state_dict().items()}
    head = model.head.weight.detach().clone()
    train_epochs(model, *tensors(X, y), job.train, 3, seed=0, objective=Objective.of(job, 2))
    assert all(torch.equal(body[k], v) for k, v in model.body.state_dict().items())
    assert not torch.equal(head, model.head.weight)
    assert {"input", "body", "head"} <= set(parameter_groups(model))


def test_early_stopping_patience_and_restore():
    stopper = EarlyStopping(_job().train.early_stopping.model_copy(update={"patience": 2, "mode": "min"}))
    model = torch.nn.Linear(1, 1)
    values = [1.0, 0.5, 0.6, 0.4, 0.45, 0.5]
    stops = []
    for epoch, v in enumerate(values, 1):
        with torch.no_grad():
            model.weight.fill_(v)
        stops.append(stopper.step(epoch, v, model))
    assert stops == [False, False, False, False, False, True]
    assert stopper.best_epoch == 4 and stopper.stopped_epoch == 6
    assert stopper.restore(model) and float(model.weight) == pytest.approx(0.4)


# ----------------------------------------------------------------------------- metrics vs scikit-learn
def _predictions(k, n=300, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("k", [2, 4])
def test_classification_metrics_match_sklearn(k):
    y, probs = _predictions(k)
    pred = probs.argmax(1)
    got = M.classification(y, probs)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        assert got[f"{name}_macro"] == pytest.approx(fn(y, pred, average="macro", zero_division=0))
        if k == 2:
            assert got[name] == pytest.approx(fn(y, pred, average="binary", zero_division=0))
    expected_auc = (skm.roc_auc_score(y, probs[:, 1]) if k == 2
                    else skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert got["auroc"] == pytest.approx(expected_auc)
    np.testing.assert_array_equal(M.confusion(y, pred, k), skm.confusion_matrix(y, pred, labels=range(k)))


def test_auroc_with_ties_and_a_missing_prediction_class_match_sklearn():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    score = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.5, 0.7, 0.2])
    assert M.auroc(y, np.stack([1 - score, score], 1)) == pytest.approx(skm.roc_auc_score(y, score))
    pred = np.zeros(8, dtype=int)  # never predicts class 1: precision 0 there, as sklearn's zero_division=0
    got = M.from_confusion(M.confusion(y, pred, 2))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))


def test_regression_metrics_match_sklearn_and_pool_exactly():
    rng = np.random.default_rng(0)
    y = rng.normal(100, 30, 200)
    pred = y + rng.normal(0, 10, 200)
    got = M.regression(y, pred)
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))
    pooled = M.regression_sums(y[:70], pred[:70]) + M.regression_sums(y[70:], pred[70:])
    assert M.from_regression_sums(pooled)["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_federated_metrics_are_pooled_from_hospital_counts(monkeypatch):
    """The round logger's eval/* equal sklearn's on the union of every hospital's test rows."""
    from orchestrator.jobs.federated.rounds import RoundLogger
    from strategies.base import RoundReport

    y, probs = _predictions(3, n=150)
    pred = probs.argmax(1)
    logged = {}

    class Run:
        def log_metrics(self, m, step):
            logged.update(m)

    report = RoundReport(1, "evaluate")
    for pid, rows in enumerate(np.array_split(np.arange(150), 3)):
        report.hospitals[pid] = {"num-examples": float(len(rows)), "eval_loss": 0.1, "eval_accuracy": 0.0}
        report.extras[pid] = {"confusion": {"counts": M.confusion(y[rows], pred[rows], 3).ravel().tolist()}}
    RoundLogger(Run(), ["a", "b", "c"], 3)(report)
    assert logged["eval/accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert logged["eval/f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert "hospital_b/eval/accuracy" in logged
