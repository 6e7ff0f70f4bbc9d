"""Poisoned updates for robustness drills (`federated.attack`): scaled or sign-flipped, pure numpy
on named arrays (tested in tests/unit/test_arithmetic.py)."""
from __future__ import annotations

import numpy as np

State = dict[str, np.ndarray]


def _floating(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def poison(x: State, y: State, kind: str, factor: float) -> State:
    """A Byzantine hospital's update: `scale` sends x + factor (y - x), `sign_flip` x - factor (y - x)."""
    sign = {"scale": 1.0, "sign_flip": -1.0}[kind]
    return {k: (x[k] + sign * factor * (y[k] - x[k])).astype(y[k].dtype) if _floating(y[k]) else y[k]
            for k in y}
