"""Integrated gradients as the method guarantees: for a linear logit it is exactly
weight x (input - baseline); for any model the attributions add up to f(x) - f(baseline)."""
from __future__ import annotations

import numpy as np
import torch

from orchestrator.core.attribution import integrated_gradients


def test_a_linear_models_attribution_is_weight_times_distance_from_the_baseline():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    X = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    baseline = np.full(5, 0.3, dtype=np.float32)
    got = integrated_gradients(model, X, baseline, classification=False, steps=16)
    w = model.weight.detach().numpy()[0]
    assert np.allclose(got, np.abs(w * (X - baseline)).mean(0), atol=1e-5)


def test_attributions_are_complete_for_a_nonlinear_classifier():
    from captum.attr import IntegratedGradients

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    X = torch.randn(20, 6)
    base = torch.zeros_like(X)
    target = model(X).argmax(1)
    attr, delta = IntegratedGradients(model).attribute(X, base, target=target, n_steps=64,
                                                       return_convergence_delta=True)
    gap = model(X).gather(1, target[:, None])[:, 0] - model(base).gather(1, target[:, None])[:, 0]
    assert torch.allclose(attr.sum(1), gap, atol=0.05 * gap.abs().max().item() + 1e-3)
    ours = integrated_gradients(model, X.numpy(), np.zeros(6, dtype=np.float32), classification=True, steps=64)
    assert np.allclose(ours, attr.abs().mean(0).detach().numpy(), atol=1e-4)
