"""Who holds which rows: the central held-out split, each hospital's share of a pooled source,
each hospital's own train/test split, and imputation from training rows only. Plain numpy,
deterministic from the seed: the server and every hospital derive the same splits independently.
"""
from __future__ import annotations

import re

import numpy as np

from orchestrator.core.tables import Split, Table
from orchestrator.core.partitioning import partition


def split_indices(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified when every class has two rows, else a plain shuffle; never an empty side."""
    n = len(y)
    rng = np.random.default_rng(seed)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    labels, counts = np.unique(y, return_counts=True)
    if np.issubdtype(y.dtype, np.integer) and len(labels) > 1 and counts.min() >= 2 and n_test >= len(labels) and n - n_test >= len(labels):
        test = []
        for lab in labels:
            idx = rng.permutation(np.flatnonzero(y == lab))
            k = max(1, int(round(len(idx) * test_fraction)))
            test.append(idx[: min(k, len(idx) - 1)])
        test_idx = np.sort(np.concatenate(test))
    else:
        test_idx = np.sort(rng.permutation(n)[:n_test])
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def column_fill(X: np.ndarray, how: str, fallback: np.ndarray | None = None) -> np.ndarray:
    """Per-column median/mean of observed cells; `fallback` where a column has none."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are handled below
        stat = np.nanmedian(X, axis=0) if how == "median" else np.nanmean(X, axis=0)
    if X.shape[0] == 0:
        stat = np.full(X.shape[1], np.nan, dtype=np.float32)
    empty = np.isnan(stat)
    if empty.any():
        stat = np.where(empty, fallback if fallback is not None else 0.0, stat)
    return stat.astype(np.float32)


def fill(X: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not np.isnan(X).any():
        return X
    return np.where(np.isnan(X), values[None, :], X).astype(np.float32)


def impute_split(split: Split, how: str, fallback: np.ndarray | None = None) -> Split:
    """Fill train and test from statistics of the training rows only."""
    values = column_fill(split.X_train, how, fallback)
    missing = int(np.isnan(split.X_train).sum() + np.isnan(split.X_test).sum())
    return Split(fill(split.X_train, values), split.y_train, fill(split.X_test, values), split.y_test,
                 {**split.notes, "imputed_cells": missing})


# --------------------------------------------------------------------------- who holds which rows
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.]")


def hospital_name(stem: str) -> str:
    """A file stem as it may appear in a metric key (`hospital_<name>/eval/accuracy`)."""
    return _UNSAFE.sub("_", stem) or "site"


def pool_and_central(table: Table, job) -> tuple[np.ndarray, np.ndarray]:
    """Rows shared among hospitals, and the central held-out rows the server evaluates on."""
    return split_indices(table.y, job.data.test_fraction, job.seed)


def pool_partition(table: Table, job, num_clients: int) -> tuple[np.ndarray, list[np.ndarray]]:
    pool, _ = pool_and_central(table, job)
    p = job.federated.partition
    parts = partition(table.y[pool], p.name, num_clients, job.seed + 1, p.alpha, p.min_size, p.labels_per_hospital)
    return pool, [pool[part] for part in parts]


def own_split(X: np.ndarray, y: np.ndarray, job, partition_id: int) -> Split:
    tr, te = split_indices(y, job.data.test_fraction, job.seed + 1000 + partition_id)
    return Split(X[tr], y[tr], X[te], y[te])
