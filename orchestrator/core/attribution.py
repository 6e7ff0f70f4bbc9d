"""Integrated gradients (Captum) on rows the caller holds: the server's held-out split, or a
hospital's own test rows (then only the per-input means leave the hospital)."""
from __future__ import annotations

import numpy as np
import torch


def integrated_gradients(model: torch.nn.Module, X: np.ndarray, baseline: np.ndarray, classification: bool,
                         steps: int = 32) -> np.ndarray:
    """Mean |attribution| per input over the rows of X, toward the predicted class (or the output)."""
    from captum.attr import IntegratedGradients

    model.eval()
    inputs = torch.as_tensor(np.nan_to_num(X, nan=0.0), dtype=torch.float32)
    base = torch.as_tensor(baseline, dtype=torch.float32).expand_as(inputs).contiguous()
    with torch.no_grad():
        out = model(inputs)
    target = None
    if classification and out.shape[1] > 1:
        target = out.argmax(1)
    elif out.shape[1] == 1:
        target = 0
    ig = IntegratedGradients(model)
    attributions = []
    for i in range(0, len(inputs), 256):   # bounded memory: steps x batch rows at a time
        t = target[i:i + 256] if isinstance(target, torch.Tensor) else target
        attributions.append(ig.attribute(inputs[i:i + 256], baselines=base[i:i + 256], target=t,
                                         n_steps=steps, internal_batch_size=256 * 4).detach())
    return torch.cat(attributions).abs().mean(0).numpy()
