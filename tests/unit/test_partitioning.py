"""Partitioners: every row goes to exactly one hospital, the minimum is kept, the seed decides."""
from __future__ import annotations

import numpy as np
import pytest

from clients.partitioning import PartitionError, dirichlet, iid, partition


def _labels(n=500, k=2, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def _is_partition(parts, n):
    allrows = np.concatenate(parts)
    return len(allrows) == n and len(np.unique(allrows)) == n


def test_iid_covers_every_row_once_with_even_sizes():
    parts = iid(103, 10, seed=1)
    assert _is_partition(parts, 103)
    assert {len(p) for p in parts} <= {10, 11}


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_covers_every_row_once_and_keeps_the_minimum(alpha):
    y = _labels()
    parts = dirichlet(y, 10, alpha=alpha, seed=3, min_size=12)
    assert _is_partition(parts, len(y))
    assert min(len(p) for p in parts) >= 12


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha():
    y = _labels(2000, k=2)

    def mean_skew(alpha):
        parts = dirichlet(y, 10, alpha=alpha, seed=0, min_size=5)
        return np.mean([abs(y[p].mean() - y.mean()) for p in parts])

    assert mean_skew(0.1) > 3 * mean_skew(100.0)


def test_partitions_are_reproducible_from_the_seed():
    y = _labels()
    a = partition(y, "dirichlet", 7, seed=42, alpha=0.5)
    b = partition(y, "dirichlet", 7, seed=42, alpha=0.5)
    c = partition(y, "dirichlet", 7, seed=43, alpha=0.5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_more_hospitals_than_the_data_allows_is_an_explained_error():
    with pytest.raises(PartitionError, match=r"num_clients <= 5"):
        dirichlet(_labels(50), 6, alpha=0.5, seed=0, min_size=10)
