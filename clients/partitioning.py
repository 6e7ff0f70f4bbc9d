"""Split one labelled pool among simulated hospitals: iid or Dirichlet label skew.

Pure numpy, deterministic in the seed. Natural silos need no partitioner: one file is one hospital.
"""
from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    """The data cannot be split as asked (e.g. more hospitals than rows allow)."""


def check_feasible(n_rows: int, num_clients: int, min_size: int) -> None:
    if num_clients * min_size > n_rows:
        most = n_rows // min_size
        raise PartitionError(
            f"{num_clients} hospitals x at least {min_size} rows each needs {num_clients * min_size} rows, "
            f"the pool has {n_rows}: use federated.num_clients <= {most} or lower federated.partition.min_size"
        )


def iid(n_rows: int, num_clients: int, seed: int, min_size: int = 1) -> list[np.ndarray]:
    check_feasible(n_rows, num_clients, min_size)
    perm = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def dirichlet(y: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10,
              max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: each class is shared among hospitals by proportions ~ Dir(alpha).

    Draws are repeated until every hospital holds `min_size` rows; if that keeps failing (tiny
    alpha), rows are moved from the largest hospitals to the smallest, so the minimum is a guarantee.
    """
    check_feasible(len(y), num_clients, min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    parts: list[list[int]] = []
    for _ in range(max_tries):
        parts = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        _top_up(parts, min_size, rng)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _top_up(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    for small in parts:
        while len(small) < min_size:
            donor = max(parts, key=len)
            small.append(donor.pop(int(rng.integers(len(donor)))))


def partition(y: np.ndarray, name: str, num_clients: int, seed: int, alpha: float = 0.5,
              min_size: int = 10) -> list[np.ndarray]:
    if name == "iid":
        return iid(len(y), num_clients, seed, min_size)
    if name == "dirichlet":
        return dirichlet(y, num_clients, alpha, seed, min_size)
    raise PartitionError(f"federated.partition.name: '{name}' does not split a single pool")
