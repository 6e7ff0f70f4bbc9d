"""What one hospital holds: its own rows, split into its own train and test sets.

In simulation every hospital derives its share deterministically from the seed (the pool is
partitioned the same way in every process); in Flower's deployment engine a hospital reads only
the file named by its node config (`data-path`). Either way no row leaves this module's caller.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from orchestrator.core.columns import agree_vocabulary, category_counts
from orchestrator.core.csvfiles import csv_schema, frame_to_table, label_str, text_columns
from orchestrator.core.data import Schema, Split, Table, hospital_paths, load_source
from orchestrator.core.splits import hospital_name, own_split, pool_partition
from orchestrator.spec.errors import DataError
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
        path = Path(data_path) if data_path else hospital_paths(job)[partition_id]
        (table,), _ = load_source(job, schema, path)
        name = path.name if job.data.source == "images" else path.stem
        return hospital_name(name), own_split(table.X, table.y, job, partition_id, table.groups)
    table, shares = _shares(job.model_dump_json(), schema, num_partitions)
    rows = shares[partition_id]
    groups = table.groups[rows] if table.groups is not None else None
    return str(partition_id), own_split(table.X[rows], table.y[rows], job, partition_id, groups)


def describe_share(job: JobSpec, partition_id: int, num_partitions: int, data_path: str | None = None) -> dict:
    """What a hospital says about its data before any schema is agreed (Flower's deployment
    engine, where the coordinator holds no data): its name, its columns, the labels it holds, row
    counts and observed cells per column. Facts about the data, never a row. A mistake in the
    hospital's file raises DataError naming it."""
    from orchestrator.core.csvfiles import read_frame

    spec = job.data
    if spec.source == "images":
        if not data_path:
            raise DataError(f"hospital {partition_id}", [
                "no data-path in this SuperNode's node config: a hospital in a deployment reads its own images "
                "(consortium federation supernode --data FOLDER)"])
        if job.model.head == "segmentation":   # label values and their pixel counts, never a mask
            from orchestrator.core.imaging.masked import describe_masked

            return describe_masked(job, Path(data_path), partition_id)
        from orchestrator.core.imaging.tables import describe_images

        return describe_images(job, Path(data_path), partition_id)
    if spec.source not in ("csv", "images") and data_path:
        raise DataError(f"hospital {Path(data_path).stem}", [
            f"this SuperNode holds {data_path} (its --data), and the job asks for the bundled demo source "
            f"'{spec.source}': set data.source: csv in the job to train on the hospitals' files (a demo source "
            "runs only on SuperNodes started without --data)"])
    if spec.source != "csv":  # public demo data: every hospital derives the same table and its share
        (table,), schema = load_source(job)
        _, shares = pool_partition(table, job, num_partitions)
        rows = shares[partition_id]
        name, X, y = str(partition_id), table.X[rows], table.y[rows]
        labels: list = list(schema.classes)
        features = list(schema.features)
    else:
        if not data_path:
            raise DataError(f"hospital {partition_id}", [
                "no data-path in this SuperNode's node config: a hospital in a deployment reads its own CSV "
                "(consortium federation supernode --data FILE)"])
        path = Path(data_path)
        site = job.federated.partition.site_column if job.federated.partition.name == "natural" else None
        df = read_frame(path, spec, site)
        name = hospital_name(str(df[site].iloc[0]) if site else path.stem)
        if site:
            df = df.drop(columns=[site])
        if spec.classes:
            df = df[df[spec.target].map(label_str).isin(spec.classes)]
        features = [str(c) for c in df.columns if c != spec.target]
        text = text_columns(df, spec.target)
        counts = category_counts(df, text)   # how often each value occurs: counts, never rows
        if job.model.head == "linear":
            csv_schema([df], spec.target, [path], regression=True)  # the target must be numeric
            local = Schema.of(features, (), agree_vocabulary([counts], spec.max_categories))
            labels = []
        else:
            values = sorted({v.item() if hasattr(v, "item") else v for v in df[spec.target].tolist()}, key=_order)
            local = Schema.of(features, tuple(label_str(v) for v in values),
                              agree_vocabulary([counts], spec.max_categories))
            labels = values
        table = frame_to_table(df, spec.target, local, name)
        X, y = table.X, table.y
        observed = df[features].notna().sum(0).astype(int).tolist()
        split = own_split(X, y, job, partition_id)
        return {"name": name, "features": features, "labels": labels, "rows": int(len(y)),
                "train_rows": int(len(split.y_train)), "missing": int(df[features].isna().sum().sum()),
                "observed": observed, "categories": counts}
    split = own_split(X, y, job, partition_id)
    return {"name": name, "features": features, "labels": labels, "rows": int(len(y)),
            "train_rows": int(len(split.y_train)), "missing": int(np.isnan(X).sum()),
            "observed": (~np.isnan(X)).sum(0).astype(int).tolist()}


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def cached_share(job: JobSpec, job_json: str, schema: Schema, partition_id: int, num_partitions: int,
                 data_path: str | None, cache_dir: str) -> tuple[str, Split]:
    """`hospital_share`, kept on the hospital's own disk between messages. Flower's SuperNode runs
    every message in a fresh process; reading and splitting the CSV (and importing pandas) once per
    job instead of once per message is most of what a hospital adds to Flower's own cost. The key
    covers the job, the schema, the partition and the file's size and time, so a changed file or
    job is read afresh."""
    import hashlib
    import json

    stat = Path(data_path).stat() if data_path else None
    key = hashlib.sha256(json.dumps([job_json, schema.to_dict(), partition_id, num_partitions, data_path,
                                     [stat.st_size, stat.st_mtime_ns] if stat else None]).encode()).hexdigest()[:24]
    file = Path(cache_dir) / f"share-{key}.npz"
    if file.exists():
        try:
            with np.load(file, allow_pickle=False) as z:
                return str(z["name"]), Split(z["X_train"], z["y_train"], z["X_test"], z["y_test"])
        except (OSError, ValueError, KeyError):
            pass  # a torn or old file: read the data again
    name, split = hospital_share(job, schema, partition_id, num_partitions, data_path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, name=np.array(name), X_train=split.X_train, y_train=split.y_train, X_test=split.X_test,
             y_test=split.y_test)
    os.replace(tmp, file)
    return name, split
