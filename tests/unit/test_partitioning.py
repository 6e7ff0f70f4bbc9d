"""Partitioners: every row goes to exactly one hospital, the minimum is kept, the seed decides."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.partitioning import PartitionError, dirichlet, iid, partition


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


def test_shards_give_every_hospital_exactly_its_labels():
    from orchestrator.core.partitioning import shards

    y = np.random.default_rng(0).integers(0, 10, 1500)
    parts = shards(y, 10, labels_per_hospital=2, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1500))
    assert all(len(np.unique(y[p])) == 2 for p in parts)
    again = shards(y, 10, labels_per_hospital=2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_quantity_skew_varies_sizes_keeps_labels_mixed_and_the_minimum():
    from orchestrator.core.partitioning import quantity

    parts = quantity(455, 10, alpha=0.5, seed=3, min_size=10)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 455 and len(np.unique(np.concatenate(parts))) == 455
    assert min(sizes) >= 10 and max(sizes) > 3 * min(sizes)


def test_one_csv_with_a_site_column_is_one_hospital_per_site(tmp_path):
    from orchestrator.spec.job import JobSpec
    from orchestrator.core.data import load_source

    rows = ["age,site,target"] + [f"{i},{['b-town', 'a-ville', 'c-city'][i % 3]},{i % 2}" for i in range(60)]
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    job = JobSpec.model_validate({"data": {"source": "csv", "path": str(tmp_path / "all.csv")},
                                  "federated": {"num_clients": None,
                                                "partition": {"name": "natural", "site_column": "site"}}})
    tables, schema = load_source(job)
    assert [t.name for t in tables] == ["a-ville", "b-town", "c-city"]
    assert schema.features == ("age",) and all(len(t.y) == 20 for t in tables)
    assert sorted(np.concatenate([t.X[:, 0] for t in tables]).tolist()) == list(range(60))
