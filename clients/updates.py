"""A hospital's own update arithmetic, pure numpy on named arrays (tested in tests/unit/test_arithmetic.py).

- SCAFFOLD (Karimireddy et al., 2020, option II): the hospital's new control variate.
- Poisoned updates for robustness drills (`federated.attack`): scaled or sign-flipped.
"""
from __future__ import annotations

import numpy as np

State = dict[str, np.ndarray]


def _floating(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def scaffold_client_control(c_i: State, c: State, x: State, y: State, lr_sum: float) -> State:
    """c_i+ = c_i - c + (x - y) / (sum of the local steps' learning rates): the mean local gradient."""
    if lr_sum <= 0:
        return {k: v.copy() for k, v in c_i.items()}
    return {k: (c_i[k] - c[k] + (x[k] - y[k]) / lr_sum).astype(c_i[k].dtype) for k in c_i}


def poison(x: State, y: State, kind: str, factor: float) -> State:
    """A Byzantine hospital's update: `scale` sends x + factor (y - x), `sign_flip` x - factor (y - x)."""
    sign = {"scale": 1.0, "sign_flip": -1.0}[kind]
    return {k: (x[k] + sign * factor * (y[k] - x[k])).astype(y[k].dtype) if _floating(y[k]) else y[k]
            for k in y}
