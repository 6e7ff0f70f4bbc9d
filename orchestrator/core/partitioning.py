"""Split one labelled pool among simulated hospitals: iid, Dirichlet label skew, label shards, quantity skew.

Deterministic in the seed. iid and Dirichlet are a few lines of numpy (they run in every simulated
hospital's process, where importing Hugging Face `datasets` would cost ~8 s); shards and quantity
skew use Flower Datasets' partitioners (PathologicalPartitioner, SizePartitioner) on a table of row
numbers. Natural silos need no partitioner: one file (or one site_column value) is one hospital.
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


def _rows_dataset(y: np.ndarray):
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing is downloaded, ever
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    return Dataset.from_dict({"label": np.asarray(y).tolist(), "row": np.arange(len(y)).tolist()})


def shards(y: np.ndarray, num_clients: int, labels_per_hospital: int, seed: int, min_size: int = 10
           ) -> list[np.ndarray]:
    """Pathological label skew: every hospital holds `labels_per_hospital` labels, each label's rows
    shared among the hospitals that hold it (Flower Datasets' PathologicalPartitioner)."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    check_feasible(len(y), num_clients, min_size)
    classes = len(np.unique(y))
    if labels_per_hospital > classes:
        raise PartitionError(f"federated.partition.labels_per_hospital: {labels_per_hospital} exceeds the "
                             f"{classes} classes in the data")
    part = PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                   num_classes_per_partition=labels_per_hospital,
                                   class_assignment_mode="first-deterministic", shuffle=True, seed=seed)
    part.dataset = _rows_dataset(y)
    out = [np.sort(np.asarray(part.load_partition(i)["row"], dtype=np.int64)) for i in range(num_clients)]
    small = [i for i, o in enumerate(out) if len(o) < min_size]
    if small:
        raise PartitionError(f"federated.partition: shards leave hospital(s) {small[:5]} with fewer than "
                             f"{min_size} rows (min_size): use fewer hospitals or more labels_per_hospital")
    return out


def quantity(n_rows: int, num_clients: int, alpha: float, seed: int, min_size: int = 10) -> list[np.ndarray]:
    """Quantity skew: hospital sizes ~ Dir(alpha) over the rows (at least `min_size` each), labels
    iid within each (Flower Datasets' SizePartitioner on a shuffled pool)."""
    from flwr_datasets.partitioner import SizePartitioner

    check_feasible(n_rows, num_clients, min_size)
    rng = np.random.default_rng(seed)
    spare = n_rows - num_clients * min_size
    sizes = min_size + np.floor(rng.dirichlet(np.full(num_clients, alpha)) * spare).astype(int)
    sizes[np.argmax(sizes)] += n_rows - sizes.sum()  # every row goes somewhere
    perm = rng.permutation(n_rows)
    part = SizePartitioner([int(s) for s in sizes])
    part.dataset = _rows_dataset(np.zeros(n_rows, dtype=np.int64)).select(perm.tolist())
    return [np.sort(np.asarray(part.load_partition(i)["row"], dtype=np.int64)) for i in range(num_clients)]


def partition(y: np.ndarray, name: str, num_clients: int, seed: int, alpha: float = 0.5,
              min_size: int = 10, labels_per_hospital: int = 2) -> list[np.ndarray]:
    if name == "iid":
        return iid(len(y), num_clients, seed, min_size)
    if name == "dirichlet":
        return dirichlet(y, num_clients, alpha, seed, min_size)
    if name == "shards":
        return shards(y, num_clients, labels_per_hospital, seed, min_size)
    if name == "quantity":
        return quantity(len(y), num_clients, alpha, seed, min_size)
    raise PartitionError(f"federated.partition.name: '{name}' does not split a single pool")
