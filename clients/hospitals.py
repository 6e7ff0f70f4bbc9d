"""What one hospital holds: its own rows, split into its own train and test sets.

In simulation every hospital derives its share deterministically from the seed (the pool is
partitioned the same way in every process); in Flower's deployment engine a hospital reads only
the file named by its node config (`data-path`). Either way no row leaves this module's caller.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from clients.partitioning import partition
from orchestrator.config import JobSpec
from orchestrator.data import Schema, Split, Table, csv_files, load_source, split_indices

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.]")


def hospital_name(stem: str) -> str:
    """A file stem as it may appear in a metric key (`hospital_<name>/eval/accuracy`)."""
    return _UNSAFE.sub("_", stem) or "site"


def single_table(job: JobSpec, schema: Schema | None = None) -> tuple[Table, Schema]:
    (table,), schema = load_source(job, schema)
    return table, schema


def pool_and_central(table: Table, job: JobSpec) -> tuple[np.ndarray, np.ndarray]:
    """Rows shared among hospitals, and the central held-out rows the server evaluates on."""
    return split_indices(table.y, job.data.test_fraction, job.seed)


def pool_partition(table: Table, job: JobSpec, num_clients: int) -> tuple[np.ndarray, list[np.ndarray]]:
    pool, _ = pool_and_central(table, job)
    p = job.federated.partition
    parts = partition(table.y[pool], p.name, num_clients, job.seed + 1, p.alpha, p.min_size, p.labels_per_hospital)
    return pool, [pool[part] for part in parts]


def own_split(X: np.ndarray, y: np.ndarray, job: JobSpec, partition_id: int) -> Split:
    tr, te = split_indices(y, job.data.test_fraction, job.seed + 1000 + partition_id)
    return Split(X[tr], y[tr], X[te], y[te])


@lru_cache(maxsize=2)
def _shares(job_json: str, schema: Schema, num_partitions: int) -> tuple[Table, list[np.ndarray]]:
    # Simulation only: every hospital in one process derives the same partition; compute it once.
    job = JobSpec.model_validate_json(job_json)
    table, _ = single_table(job, schema)
    _, shares = pool_partition(table, job, num_partitions)
    return table, shares


def hospital_share(job: JobSpec, schema: Schema, partition_id: int, num_partitions: int,
                   data_path: str | None = None) -> tuple[str, Split]:
    """(name, raw split with NaN for missing cells) of hospital `partition_id`."""
    if job.federated.partition.name == "natural":
        if job.federated.partition.site_column is not None:
            # one shared file in simulation (this hospital keeps only its site's rows); in deployment
            # the hospital's own file, which names its site
            tables, _ = load_source(job, schema, Path(data_path) if data_path else None)
            table = tables[0] if data_path else tables[partition_id]
            return hospital_name(table.name), own_split(table.X, table.y, job, partition_id)
        path = Path(data_path) if data_path else csv_files(job.data)[partition_id]
        (table,), _ = load_source(job, schema, path)
        return hospital_name(path.stem), own_split(table.X, table.y, job, partition_id)
    table, shares = _shares(job.model_dump_json(), schema, num_partitions)
    rows = shares[partition_id]
    return str(partition_id), own_split(table.X[rows], table.y[rows], job, partition_id)
