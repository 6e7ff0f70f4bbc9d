"""Check the data against the job before anything starts, and lay out who holds what.

Runs in the orchestrator before an MLflow run exists, so a bad file or an impossible split is a
clear DataError (exit 2) with nothing created. In a federated job the plan keeps only what the
server may see: the schema, hospital names and sizes, and the central held-out split.
"""
from __future__ import annotations

import numpy as np

from orchestrator.core.partitioning import PartitionError
from orchestrator.spec.job import JobSpec
from orchestrator.spec.model import IMAGE_MODELS, SEQUENCE_MODELS
from orchestrator.core.data import Schema, Split, Table, load_source
from orchestrator.core.dataplan import DataPlan
from orchestrator.core.splits import hospital_name, impute_split, own_split, pool_and_central, pool_partition
from orchestrator.spec.errors import DataError
from orchestrator.core.models import image_side

MIN_SIDE = {"densenet121": 32, "efficientnet_b0": 32}   # their stems and blocks downsample 32x


def load_tables(job: JobSpec) -> tuple[list[Table], Schema]:
    return load_source(job)


def plan_data(job: JobSpec) -> DataPlan:
    tables, schema = load_tables(job)
    images = job.data.source == "images"   # decoded pixels: never missing (and read, not copied, from their cache)
    empty = [] if images else [f for j, f in enumerate(schema.features) if all(np.isnan(t.X[:, j]).all() for t in tables)]
    if empty:
        raise DataError(job.data.path or job.data.source,
                        [f"column '{c}' has no values in any row: drop it or fill it" for c in empty])
    check_schema(job, schema, job.data.path or job.data.source)
    natural = len(tables) > 1 or (job.by_hospital and job.federated.partition.name == "natural")
    source = job.data.path or job.data.source
    if job.by_hospital and not natural and len(tables) > 1:
        raise DataError(source, ["a directory of per-hospital CSVs needs federated.partition.name: natural"])
    min_rows = job.federated.partition.min_size
    notes: dict = {"data.num_features": len(schema.features), "data.num_classes": len(schema.classes)}
    if schema.categories:   # the vocabulary agreed from the hospitals' counts of their text values
        notes["data.categories"] = "; ".join(f"{c}: {', '.join(v)} (+other)" for c, v in schema.categories)
    for key in sorted({k for t in tables for k in t.notes}):   # counted while reading: per hospital
        counts = {t.name: int(t.notes.get(key, 0)) for t in tables}
        notes[f"data.{key}"] = sum(counts.values())
        if len(tables) > 1:
            notes[f"data.{key}_by_hospital"] = ", ".join(f"{k}: {v}" for k, v in counts.items())
    if job.data.source == "images":
        notes["data.images"] = int(sum(len(t.y) for t in tables))
        notes["data.split"] = "by patient" if all(t.groups is not None for t in tables) else "by image"
    missing = 0 if images else int(sum(np.isnan(t.X).sum() for t in tables))
    notes["data.missing_cells"] = missing
    notes["data.imputation"] = (
        f"{job.data.impute} of each hospital's own training rows" if job.by_hospital
        else f"{job.data.impute} of the pooled training rows"
    ) if missing else "none needed"

    if natural:
        unit = "images" if job.data.source == "images" else "rows"
        problems = [f"{t.name if job.data.source == 'images' else t.name + '.csv'}: {len(t.y)} {unit}, a hospital "
                    f"needs at least {min_rows} (federated.partition.min_size) for its own train/test split"
                    for t in tables if len(t.y) < min_rows]
        n = job.federated.num_clients
        if job.by_hospital and n is not None and n != len(tables):
            problems.append(f"federated.num_clients: {n}, but {source} holds {len(tables)} hospital files "
                            f"(set it to {len(tables)} or null)")
        if problems:
            raise DataError(source, problems)
        splits = [own_split(t.X, t.y, job, i, t.groups) for i, t in enumerate(tables)]
        centralized = None
        if job.pooled:
            pooled = Split(*(np.concatenate([getattr(s, a) for s in splits])
                             for a in ("X_train", "y_train", "X_test", "y_test")))
            centralized = impute_split(pooled, job.data.impute)
        plan = DataPlan(schema, [hospital_name(t.name) for t in tables], [len(t.y) for t in tables],
                        central=None, centralized=centralized, notes=notes)
        if job.kind == "federated":
            check_privacy_budget(job, lambda: [len(s.y_train) for s in splits])
        return plan

    (table,) = tables
    if len(table.y) < 4:
        raise DataError(source, [f"{len(table.y)} rows: too few to hold out a test split"])
    pool, test = pool_and_central(table, job)
    # The server's held-out rows are imputed from themselves, as a new site would do.
    central = impute_split(Split(table.X[test], table.y[test], table.X[test], table.y[test]), job.data.impute)
    if job.pooled:
        centralized = impute_split(Split(table.X[pool], table.y[pool], table.X[test], table.y[test]), job.data.impute)
        return DataPlan(schema, [], [], central=central, centralized=centralized, notes=notes)
    n = int(job.federated.num_clients or 0)
    try:
        _, shares = pool_partition(table, job, n)
    except PartitionError as exc:
        msg = str(exc)
        raise DataError(source, [msg if msg.startswith("federated.") else f"federated.num_clients: {msg}"]) from None
    check_privacy_budget(job, lambda: [len(own_split(table.X[rows], table.y[rows], job, i,
                                                     None if table.groups is None else table.groups[rows]).y_train)
                                       for i, rows in enumerate(shares)])
    return DataPlan(schema, [str(i) for i in range(n)], [len(s) for s in shares], central=central, notes=notes)


def check_schema(job: JobSpec, schema: Schema, source: str) -> None:
    """What the model asks of the agreed schema (whoever agreed it: the files here, or the
    hospitals' census in a deployment)."""
    dims = job.model.spatial_dims
    if job.model.name in IMAGE_MODELS and image_side(len(schema.features), dims) is None:
        what = "square images" if dims == 2 else "cubic volumes (model.spatial_dims 3)"
        raise DataError(source,
                        [f"model.name: {job.model.name} needs {what}, but the data has {len(schema.features)} "
                         "feature columns"])
    smallest = MIN_SIDE.get(job.model.name, 0)
    side = image_side(len(schema.features), dims) or 0
    if job.model.name in IMAGE_MODELS and side < smallest:
        raise DataError(source, [f"model.name: {job.model.name} halves an image five times: it needs images of at "
                                 f"least {smallest}x{smallest} pixels (these are {side}x{side}: set "
                                 f"data.image_size: {smallest} or more, or use model.name: cnn or resnet18)"])
    if job.model.name in SEQUENCE_MODELS and len(schema.features) % job.model.input_size:
        raise DataError(source,
                        [f"model.input_size: {job.model.input_size} features per step do not divide the "
                         f"{len(schema.features)} feature columns into whole time steps"])
    if job.model.head == "sigmoid" and len(schema.classes) != 2:
        raise DataError(source,
                        [f"model.head: sigmoid is for two classes, the data has {len(schema.classes)}: "
                         f"use model.head: softmax"])
    if job.model.freeze:
        from orchestrator.spec.errors import ConfigError
        from orchestrator.core.models import build_model

        try:
            build_model(job.model, len(schema.features), max(len(schema.classes), 1))
        except ValueError as exc:
            raise ConfigError("model.freeze", [str(exc).removeprefix("model.freeze: ")]) from None
    weights = job.train.class_weights
    if isinstance(weights, list) and len(weights) != len(schema.classes):
        raise DataError(source,
                        [f"train.class_weights: {len(weights)} weights for {len(schema.classes)} classes "
                         f"{list(schema.classes)}"])


def plan_from_census(job: JobSpec, described: dict[int, dict]) -> DataPlan:
    """The plan of a deployed federation, from what each hospital said about its data (partition
    id -> `clients.hospitals.describe_share`): the coordinator never opens a hospital's file.
    A mistake names the hospital."""
    from orchestrator.core.csvfiles import label_str

    pids = sorted(described)
    first = described[pids[0]]
    where = "the hospitals' census"
    problems = []
    features = list(first["features"])
    for pid in pids[1:]:
        d = described[pid]
        if set(d["features"]) != set(features):
            missing, extra = sorted(set(features) - set(d["features"])), sorted(set(d["features"]) - set(features))
            problems.append(f"hospital {d['name']}: columns differ from hospital {first['name']}'s "
                            f"(missing {missing}, extra {extra})")
    min_rows = job.federated.partition.min_size
    problems += [f"hospital {described[p]['name']}: {described[p]['rows']} rows, a hospital needs at least "
                 f"{min_rows} (federated.partition.min_size) for its own train/test split"
                 for p in pids if described[p]["rows"] < min_rows]
    names = [described[p]["name"] for p in pids]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"hospitals {twice} answer under the same name from different SuperNodes: give each "
                        "SuperNode its own partition-id and data file")
    if problems:
        raise DataError(where, problems)
    values: tuple[int, ...] = ()
    if job.model.head == "segmentation":   # the masks' label values, agreed from the hospitals' counts
        from orchestrator.core.imaging.masked import agreed_values

        values, classes = agreed_values([{int(v): 1 for v in described[p]["labels"]} for p in pids], job.data, where)
    elif job.model.head == "linear":
        classes = ()
    elif job.data.classes:
        classes = tuple(job.data.classes)
    else:
        union = {v for p in pids for v in described[p]["labels"]}
        try:
            ordered = sorted(union)
        except TypeError:
            ordered = sorted(union, key=str)
        classes = tuple(dict.fromkeys(label_str(v) for v in ordered))
        if len(classes) < (1 if job.model.head == "multilabel" else 2):
            raise DataError(where, [f"data.target: the hospitals hold a single class {list(classes)}: nothing to learn"])
    from orchestrator.core.columns import agree_vocabulary

    # text columns: one vocabulary from the hospitals' counts of their values
    vocab = agree_vocabulary([described[p].get("categories", {}) for p in pids], job.data.max_categories)
    schema = Schema.of(features, classes, vocab)
    if job.model.head in ("multilabel", "segmentation"):   # findings, several per image; labels per pixel
        from dataclasses import replace

        schema = replace(schema, multilabel=job.model.head == "multilabel", segmentation=bool(values), values=values)
    observed = np.zeros(len(features), dtype=np.int64)
    for p in pids:
        order = {f: i for i, f in enumerate(described[p]["features"])}
        observed += np.asarray([described[p]["observed"][order[f]] for f in features], dtype=np.int64)
    empty = [f for f, n in zip(features, observed) if n == 0]
    if empty:
        raise DataError(where, [f"column '{c}' has no values at any hospital: drop it or fill it" for c in empty])
    check_schema(job, schema, where)
    missing = int(sum(described[p]["missing"] for p in pids))
    notes: dict = {"data.num_features": len(schema.features), "data.num_classes": len(classes), "data.missing_cells": missing,
                   "data.imputation": f"{job.data.impute} of each hospital's own training rows" if missing
                   else "none needed", "data.schema_from": "the hospitals' census"}
    check_privacy_budget(job, lambda: [described[p]["train_rows"] for p in pids])
    return DataPlan(schema, names, [described[p]["rows"] for p in pids], central=None, notes=notes,
                    partition_ids=pids)


def check_privacy_budget(job: JobSpec, training_rows) -> None:
    """Refuse a DP job whose rounds and noise would spend more than federated.dp.target_epsilon.
    `training_rows()` gives each hospital's training rows; only a job with a budget computes them."""
    from orchestrator.spec.errors import ConfigError

    dp, fed = job.federated.dp, job.federated
    if dp is None or dp.target_epsilon is None:
        return
    train_rows = training_rows()
    if not train_rows:
        return
    if dp.mode == "central":
        from strategies.central_dp import projected_epsilon
        from strategies.base import sample_size

        n = len(train_rows)
        eps = projected_epsilon(dp, n, sample_size(n, fed.fraction_fit, fed.min_fit(n)), fed.rounds)
        who = "the consortium"
    else:
        from clients.privacy import epsilon

        spent = [epsilon(dp.noise_multiplier, r, job.train.batch_size, job.train.epochs, fed.rounds, dp.delta)
                 for r in train_rows]
        eps = max(spent)
        who = f"hospital {int(np.argmax(spent))} ({train_rows[int(np.argmax(spent))]} training rows)"
    if eps > dp.target_epsilon:
        raise ConfigError("federated.dp", [
            f"target_epsilon: {dp.target_epsilon:g} cannot be met: {fed.rounds} rounds at noise_multiplier "
            f"{dp.noise_multiplier:g} spend epsilon {eps:.3g} for {who} at delta {dp.delta:g}; raise "
            f"federated.dp.noise_multiplier, lower federated.rounds or raise target_epsilon"])
