"""The update arithmetic Consortium writes itself, as pure functions on named numpy arrays.

No Flower, no torch: `tests/unit/test_arithmetic.py` checks each against hand-computed results.
A "state" maps parameter names to arrays. Integer arrays (e.g. batch norm's step counter) are not
averaged: the first state's value is kept.

- SCAFFOLD (Karimireddy et al., 2020, option II): the server moves x and c by the sampled hospitals'
  deltas; a hospital's new control variate is the mean of its local gradients.
- FedNova (Wang et al., 2020): hospitals that take different numbers of local steps are averaged
  on normalised updates, so a hospital with more rows does not drag the model towards its optimum.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

State = dict[str, np.ndarray]


def _floating(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    w = np.asarray(weights, dtype=np.float64)
    if len(states) == 0 or w.sum() <= 0:
        raise ValueError("weighted_mean needs at least one state with positive weight")
    w = w / w.sum()
    out = {}
    for k, first in states[0].items():
        if _floating(first):
            out[k] = sum(wi * s[k].astype(np.float64) for wi, s in zip(w, states)).astype(first.dtype)
        else:
            out[k] = first.copy()
    return out


def scaffold_server(x: State, ys: Sequence[State], control_deltas: Sequence[State], c: State,
                    weights: Sequence[float], server_lr: float, num_clients: int) -> tuple[State, State]:
    """x <- x + server_lr * weighted mean of (y_i - x);  c <- c + (|S| / N) * mean of delta c_i."""
    avg = weighted_mean(ys, weights)
    new_x = {k: (x[k] + server_lr * (avg[k] - x[k])).astype(x[k].dtype) if _floating(x[k]) else avg[k] for k in x}
    share = len(control_deltas) / num_clients
    new_c = {k: (c[k] + share * np.mean([d[k] for d in control_deltas], axis=0)).astype(c[k].dtype) for k in c}
    return new_x, new_c


def scaffold_client_control(c_i: State, c: State, x: State, y: State, lr_sum: float) -> State:
    """c_i+ = c_i - c + (x - y) / (sum of the local steps' learning rates): the mean local gradient."""
    if lr_sum <= 0:
        return {k: v.copy() for k, v in c_i.items()}
    return {k: (c_i[k] - c[k] + (x[k] - y[k]) / lr_sum).astype(c_i[k].dtype) for k in c_i}


def fednova_norm(steps: int, momentum: float = 0.0) -> float:
    """a_i, the norm of hospital i's local step weights: its step count for plain SGD, and
    (tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho) with momentum rho."""
    if momentum <= 0:
        return float(steps)
    rho = momentum
    return float((steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho))


def fednova(x: State, ys: Sequence[State], norms: Sequence[float], weights: Sequence[float]) -> State:
    """x <- x - tau_eff * sum_i p_i (x - y_i) / a_i, with p_i the row shares and tau_eff = sum_i p_i a_i."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    a = np.asarray(norms, dtype=np.float64)
    if (a <= 0).any():
        raise ValueError("fednova: every hospital must report a positive number of local steps")
    tau_eff = float((p * a).sum())
    out = {}
    for k, xk in x.items():
        if not _floating(xk):
            out[k] = ys[0][k].copy()
            continue
        direction = sum(pi * (xk.astype(np.float64) - y[k]) / ai for pi, ai, y in zip(p, a, ys))
        out[k] = (xk - tau_eff * direction).astype(xk.dtype)
    return out


def krum_select(updates: Sequence[np.ndarray], f: int, select: int = 1) -> list[int]:
    """Krum / Multi-Krum (Blanchard et al., 2017): the `select` hospitals whose updates lie closest
    to their n - f - 2 nearest neighbours, as indices into `updates` in ascending order.

    Stable by construction, so a seeded run keeps its choice on any machine: squared distances are
    taken in float64 on the differences themselves (never ||x||^2 + ||y||^2 - 2 x.y, whose
    cancellation in float32 made near-tied scores follow the BLAS kernel), each summed in numpy's
    fixed pairwise order, a hospital's distance to itself is left out by index, and equal scores
    go to the hospital that comes first (hospital order)."""
    n = len(updates)
    if n == 0:
        raise ValueError("krum_select needs at least one update")
    X = np.stack([np.asarray(u, dtype=np.float64).ravel() for u in updates])
    dist = np.stack([np.square(X - X[i]).sum(axis=1) for i in range(n)])
    closest = max(1, n - f - 2)
    scores = np.array([np.sort(np.delete(dist[i], i))[:closest].sum() if n > 1 else 0.0 for i in range(n)])
    return sorted(np.argsort(scores, kind="stable")[: max(1, min(select, n))].tolist())
