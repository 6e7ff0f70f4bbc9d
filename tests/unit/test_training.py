"""The shared training loop: it learns, it is seeded, the model carries its own input scaling."""
from __future__ import annotations

import numpy as np
import torch

from orchestrator.spec.model import ModelSpec
from orchestrator.spec.train import TrainSpec
from orchestrator.core.models import build_model, mean_scale, moments, standardizer
from orchestrator.core.training import evaluate, tensors, train_epochs


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 4)).astype(np.float32) * 50 + 500  # raw, badly scaled features
    y = (X[:, 0] + X[:, 1] > 1000).astype(np.int64)
    return X, y


def _model(X, spec=ModelSpec()):
    torch.manual_seed(0)
    model = build_model(spec, X.shape[1], 2)
    standardizer(model).set(*mean_scale(*moments(X)))
    return model


def test_training_lowers_the_loss_and_learns_from_raw_features():
    X, y = _data()
    model = _model(X)
    Xt, yt = tensors(X, y)
    before = evaluate(model, Xt, yt)["loss"]
    losses = []
    train_epochs(model, Xt, yt, TrainSpec(epochs=30), 30, seed=1, on_epoch=lambda e, v: losses.append(v))
    after = evaluate(model, Xt, yt)
    assert after["loss"] < before / 2 and losses[-1] < losses[0]
    assert after["accuracy"] > 0.9


def test_training_is_reproducible_from_the_seed():
    X, y = _data()
    a, b = _model(X, ModelSpec(dropout=0.2)), _model(X, ModelSpec(dropout=0.2))
    for m in (a, b):
        train_epochs(m, *tensors(X, y), TrainSpec(), 3, seed=7)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_moments_combine_across_hospitals_to_the_pooled_mean_and_scale():
    X, _ = _data()
    X[3, 1] = np.nan
    parts = [moments(X[:50]), moments(X[50:])]
    combined = mean_scale(*(sum(p[i] for p in parts) for i in range(3)))
    np.testing.assert_allclose(combined[0], np.nanmean(X, 0), rtol=1e-5)
    np.testing.assert_allclose(combined[1], np.nanstd(X, 0), rtol=1e-4)


def test_optimizers_all_train():
    from orchestrator.spec.train import OptimizerSpec

    X, y = _data()
    for name, lr in [("sgd", 0.1), ("adam", 0.01), ("adamw", 0.01), ("rmsprop", 0.01)]:
        model = _model(X)
        spec = TrainSpec(optimizer=OptimizerSpec(name=name, lr=lr))
        before = evaluate(model, *tensors(X, y))["loss"]
        train_epochs(model, *tensors(X, y), spec, 5, seed=0)
        assert evaluate(model, *tensors(X, y))["loss"] < before, name
