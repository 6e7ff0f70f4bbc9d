"""What one hospital holds: its own rows, split into its own train and test sets.

In simulation every hospital derives its share deterministically from the seed (the pool is
partitioned the same way in every process); in Flower's deployment engine a hospital reads only
the file named by its node config (`data-path`). Either way no row leaves this module's caller.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from orchestrator.core.csvfiles import csv_files
from orchestrator.core.data import Schema, Split, Table, load_source
from orchestrator.core.splits import hospital_name, own_split, pool_partition
from orchestrator.spec.job import JobSpec


@lru_cache(maxsize=2)
def _shares(job_json: str, schema: Schema, num_partitions: int) -> tuple[Table, list[np.ndarray]]:
    # Simulation only: every hospital in one process derives the same partition; compute it once.
    job = JobSpec.model_validate_json(job_json)
    (table,), _ = load_source(job, schema)
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
