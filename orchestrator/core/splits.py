"""Who holds which rows: the central held-out split, each hospital's share of a pooled source,
each hospital's own train/test split, and imputation from training rows only. Plain numpy,
deterministic from the seed: the server and every hospital derive the same splits independently.
"""
from __future__ import annotations

import re

import numpy as np

from orchestrator.core.tables import Split, Table
from orchestrator.core.partitioning import partition


def split_indices(y: np.ndarray, test_fraction: float, seed: int, groups: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified when every class has two rows, else a plain shuffle; never an empty side. With
    `groups` (patients), whole groups fall on one side: `group_split`."""
    if groups is not None:
        return group_split(y, groups, test_fraction, seed)
    n = len(y)
    rng = np.random.default_rng(seed)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    labels, counts = np.unique(y, return_counts=True) if y.ndim == 1 else (np.zeros(0), np.zeros(0))
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(labels) > 1 and counts.min() >= 2 and n_test >= len(labels) and n - n_test >= len(labels):
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


def group_split(y: np.ndarray, groups: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All of a patient's rows on one side (per-image splits leak a patient's look into the test
    set). Patients are drawn in a seeded order, each class's patients in turn (by their most
    frequent label), until the test side holds its share of rows; never an empty side."""
    n = len(y)
    uniq, inverse = np.unique(groups, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"{len(uniq)} patient: a split by patient needs two or more")
    rng = np.random.default_rng(seed)
    sizes = np.bincount(inverse, minlength=len(uniq))
    label = np.array([np.bincount(y[inverse == g].astype(np.int64)).argmax() if y.ndim == 1
                      and np.issubdtype(y.dtype, np.integer) else 0 for g in range(len(uniq))])
    by_class = [list(rng.permutation(np.flatnonzero(label == c))) for c in np.unique(label)]
    order = []
    while any(by_class):                 # round-robin over classes: the test side holds each class
        for queue in by_class:
            if queue:
                order.append(queue.pop(0))
    target = min(max(1, int(round(n * test_fraction))), n - 1)
    test_groups: list[int] = []
    taken = 0
    for g in order:
        if taken >= target or len(test_groups) == len(uniq) - 1:
            break
        test_groups.append(g)
        taken += sizes[g]
    mask = np.isin(inverse, test_groups)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


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


CHUNK_BYTES = 1 << 26   # 64 MiB: what a pass over a (memory-mapped) table holds at once


def rows_per_chunk(X: np.ndarray, bytes_per_value: int = 8) -> int:
    """Rows of X whose values, at `bytes_per_value` each, fill about CHUNK_BYTES (at least one)."""
    width = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
    return max(1, CHUNK_BYTES // max(1, width * bytes_per_value))


def has_nan(X: np.ndarray) -> bool:
    """Any missing cell, read a chunk of rows at a time (a memory-mapped archive is never copied whole)."""
    chunk = rows_per_chunk(X, 5)
    return any(bool(np.isnan(X[i:i + chunk]).any()) for i in range(0, len(X), chunk))


def take_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """X[rows]; for a memory-mapped cache (`imaging.tables.decode`), written a chunk of rows at a time
    to a file beside it and mapped in turn, so a hospital's train and test sides never sit in memory."""
    filename = getattr(X, "filename", None)
    if not isinstance(X, np.memmap) or filename is None:
        return X[rows]
    import hashlib
    import os
    from pathlib import Path

    rows = np.asarray(rows, dtype=np.int64)
    source = Path(filename)
    file = source.with_name(f"{source.stem}.rows-{hashlib.sha256(rows.tobytes()).hexdigest()[:16]}.npy")
    if not file.exists():
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=X.dtype, shape=(len(rows), *X.shape[1:]))
        chunk = rows_per_chunk(X, 2 * X.dtype.itemsize)
        for i in range(0, len(rows), chunk):
            out[i:i + chunk] = X[rows[i:i + chunk]]
        out.flush()
        del out
        os.replace(tmp, file)
    return np.load(file, mmap_mode="c")


def fill(X: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not has_nan(X):
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
    return split_indices(table.y, job.data.test_fraction, job.seed, table.groups)


def pool_partition(table: Table, job, num_clients: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pool's rows dealt to `num_clients` simulated hospitals. With patients, whole patients
    are dealt (each patient's rows go with the first of them), so no patient is in two hospitals."""
    pool, _ = pool_and_central(table, job)
    p = job.federated.partition
    if table.groups is None:
        parts = partition(table.y[pool], p.name, num_clients, job.seed + 1, p.alpha, p.min_size, p.labels_per_hospital)
        return pool, [pool[part] for part in parts]
    _, first, inverse = np.unique(table.groups[pool], return_index=True, return_inverse=True)
    rows_per_patient = len(pool) / len(first)
    min_patients = max(1, int(np.ceil(p.min_size / rows_per_patient)))   # min_size counts rows
    parts = partition(table.y[pool][first], p.name, num_clients, job.seed + 1, p.alpha, min_patients,
                      p.labels_per_hospital)
    return pool, [pool[np.flatnonzero(np.isin(inverse, part))] for part in parts]


def own_split(X: np.ndarray, y: np.ndarray, job, partition_id: int, groups: np.ndarray | None = None) -> Split:
    """A hospital's own train/test split (by patient where it knows its patients)."""
    if groups is not None and len(np.unique(groups)) < 2:
        groups = None   # one patient: nothing to keep apart
    tr, te = split_indices(y, job.data.test_fraction, job.seed + 1000 + partition_id, groups)
    if y.ndim > 1 and y.shape[1] > 64:   # a segmentation's masks: mapped, as the pixels are
        return Split(take_rows(X, tr), take_rows(y, tr), take_rows(X, te), take_rows(y, te))
    return Split(take_rows(X, tr), y[tr], take_rows(X, te), y[te])
