"""Hospitals' images as the tables every engine trains on: one row of pixels per image.

Each image is decoded and preprocessed once (`readers`), then kept per hospital in a cache on the
hospital's own disk (CONSORTIUM_HOME/cache/images), keyed by its files' names, sizes and times and
the preprocessing: later rounds, runs and processes read no DICOM again. The label vocabulary is
agreed from the labels the hospitals hold (sorted), `data.classes` keeps and orders a subset.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from orchestrator.core.imaging.folders import Samples, group_ids, hospital_folders, list_samples
from orchestrator.core.imaging.readers import Preprocess, UnreadableImage, read_image
from orchestrator.core.tables import Schema, Table
from orchestrator.spec.errors import DataError

CHANNEL_NAMES = {1: ("pixel",), 3: ("red", "green", "blue")}


def pixel_names(pre: Preprocess) -> tuple[str, ...]:
    """The model's input columns: pixel_ROW_COL (grey), red_/green_/blue_ROW_COL (RGB); a volume's
    voxel_SLICE_ROW_COL (grey), red_/green_/blue_SLICE_ROW_COL."""
    if pre.dims == 3:
        names = ("voxel",) if pre.channels == 1 else CHANNEL_NAMES[3]
        return tuple(f"{c}_{d}_{r}_{k}" for c in names for d in range(pre.size) for r in range(pre.size)
                     for k in range(pre.size))
    return tuple(f"{c}_{r}_{k}" for c in CHANNEL_NAMES[pre.channels] for r in range(pre.size) for k in range(pre.size))


def cache_dir() -> Path:
    home = os.environ.get("CONSORTIUM_HOME")
    return (Path(home) if home else Path.cwd() / ".consortium") / "cache" / "images"


CHUNK = 256   # images decoded (and held) at a time: a hospital's archive never sits in memory whole


def decode(samples: Samples, pre: Preprocess, unreadable: str = "error", workers: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(pixels [n, channels * size * size] float32, indices of the samples kept).

    Decoded CHUNK images at a time straight into a cache file on the hospital's disk, which is then
    memory-mapped: later rounds, runs and processes read no DICOM again, and a hospital with more
    images than memory pages them in as its batches ask (`splits.take_rows` keeps train and test
    mapped too). A file that cannot be read stops here, named with its hospital (`unreadable: skip`:
    left out)."""
    stats = []
    for p in samples.paths:
        st = p.stat()
        stats.append((str(p), st.st_size, st.st_mtime_ns))
    key = hashlib.sha256(json.dumps([stats, pre.size, pre.channels, pre.fit, pre.window, pre.spacing, pre.dims,
                                     unreadable, 2]).encode()).hexdigest()[:32]
    file, kept_file = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.kept.npy"
    if file.exists() and kept_file.exists():
        try:
            return np.load(file, mmap_mode="c"), np.load(kept_file)
        except (OSError, ValueError):
            pass   # torn or old: decode again
    n_workers = workers or min(4, os.cpu_count() or 1)

    def one(path: Path) -> np.ndarray | str:
        try:
            return read_image(path, pre)
        except UnreadableImage as exc:
            return str(exc)

    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{key}.{os.getpid()}.tmp.npy")
    width = int(np.prod(pre.shape))
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(samples.paths), width))
    kept_rows: list[int] = []
    bad: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(n_workers) as pool:   # the decoders release the GIL for most of their work
        for start in range(0, len(samples.paths), CHUNK):
            chunk = samples.paths[start:start + CHUNK]
            for i, image in enumerate(pool.map(one, chunk), start):
                if isinstance(image, str):
                    bad.append((samples.paths[i], image))
                    continue
                out[len(kept_rows)] = image.reshape(-1)
                kept_rows.append(i)
    if bad and unreadable == "error":
        del out
        tmp.unlink(missing_ok=True)
        shown = [f"{_rel(p, samples.folder)}: {reason}" for p, reason in bad[:8]]
        more = [f"... and {len(bad) - 8} more"] if len(bad) > 8 else []
        raise DataError(f"hospital {samples.name} ({samples.folder})",
                        shown + more + ["fix or remove these files, or set data.unreadable: skip to leave them out"])
    if not kept_rows:
        del out
        tmp.unlink(missing_ok=True)
        raise DataError(f"hospital {samples.name} ({samples.folder})", ["no image could be read"])
    out.flush()
    del out
    if len(kept_rows) < len(samples.paths):   # skipped files: the kept rows are the file's first rows
        full = np.load(tmp, mmap_mode="r")
        np.save(file.with_name(f"{key}.{os.getpid()}.short.npy"), full[: len(kept_rows)])
        del full
        os.replace(file.with_name(f"{key}.{os.getpid()}.short.npy"), tmp)
    kept = np.asarray(kept_rows, dtype=np.int64)
    np.save(kept_file.with_name(f"{key}.{os.getpid()}.kept.tmp.npy"), kept)
    os.replace(kept_file.with_name(f"{key}.{os.getpid()}.kept.tmp.npy"), kept_file)
    os.replace(tmp, file)
    return np.load(file, mmap_mode="c"), kept


def _rel(path: Path, folder: Path) -> str:
    for base in (folder.resolve(), folder):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def findings(label: str, spec) -> list[str]:
    """An image's findings from its label cell ('Effusion|Infiltration'; data.no_finding: none)."""
    parts = [p.strip() for p in str(label).split(spec.label_separator)]
    return [p for p in dict.fromkeys(parts) if p and p != spec.no_finding]


def multi_hot(samples: Samples, kept: np.ndarray, index: dict[str, int], spec) -> np.ndarray:
    """(images, findings) of 0/1: which of the agreed findings each kept image shows."""
    y = np.zeros((len(kept), len(index)), dtype=np.float32)
    for row, i in enumerate(kept):
        for f in findings(samples.labels[i], spec):
            if f in index:
                y[row, index[f]] = 1.0
    return y


def _check_single_label(found: list[Samples], spec) -> None:
    """Label cells that list several findings ('Effusion|Infiltration') trained as one class each
    would make every combination a class: say so, unless data.label_separator was set on purpose."""
    if "label_separator" in spec.model_fields_set:
        return
    for s in found:
        listed = [lab for lab in s.labels if spec.label_separator in lab]
        if len(listed) >= max(1, len(s.labels) // 20):
            raise DataError(f"hospital {s.name} ({s.folder})", [
                f"{len(listed)} of {len(s.labels)} label cells list several findings (e.g. '{listed[0]}'): set "
                "model.head: multilabel to train one output per finding (or set data.label_separator to "
                "another text to keep each combination as one class)"])


def _multilabel_tables(job, found: list[Samples], schema: Schema | None, pre: Preprocess) -> tuple[list[Table], Schema]:
    spec = job.data
    if schema is None:
        labels = sorted({f for s in found for lab in s.labels for f in findings(lab, spec)})
        if spec.classes:
            absent = [c for c in spec.classes if c not in labels]
            if absent:
                raise DataError(str(spec.path), [f"data.classes: {absent} are not among the findings ({labels})"])
            labels = list(spec.classes)
        if not labels:
            raise DataError(str(spec.path), ["model.head multilabel: no image has a finding (every label cell is "
                                             f"empty or data.no_finding '{spec.no_finding}')"])
        schema = Schema(pixel_names(pre), tuple(labels), multilabel=True)
    index = {c: i for i, c in enumerate(schema.classes)}
    tables = []
    for s in found:
        X, kept = decode(s, pre, spec.unreadable)
        groups = group_ids([s.patients[i] for i in kept]) if s.patients is not None else None
        notes = {k: v for k, v in s.notes.items() if k != "manifest"}
        if len(kept) < len(s.paths):
            notes["skipped_unreadable"] = len(s.paths) - len(kept)
        tables.append(Table(X, multi_hot(s, kept, index, spec), s.name, groups=groups, notes=notes))
    return tables, schema


def image_tables(job, schema: Schema | None = None, path: Path | None = None) -> tuple[list[Table], Schema]:
    """The job's images as tables (one per hospital folder, else one) and the agreed schema.
    `schema` (already agreed) and `path` (one hospital's own folder) serve the hospitals.
    model.head multilabel: each label cell lists findings, y is (images, findings) of 0/1."""
    spec = job.data
    pre = Preprocess.of(spec, job.model.spatial_dims)
    natural = job.federated.partition.name == "natural"   # kind centralized: the hospitals' images pooled
    folders = [path] if path is not None else hospital_folders(spec, natural)
    found = [list_samples(f, spec) for f in folders]
    if job.model.head == "multilabel":
        return _multilabel_tables(job, found, schema, pre)
    _check_single_label(found, spec)
    if spec.classes:
        found = [_keep(s, spec.classes) for s in found]
    if schema is None:
        labels = sorted({lab for s in found for lab in s.labels})
        if spec.classes:
            absent = [c for c in spec.classes if c not in labels]
            if absent:
                raise DataError(str(spec.path), [f"data.classes: {absent} are not among the labels found ({labels})"])
            labels = list(spec.classes)
        if len(labels) < 2:
            raise DataError(str(spec.path), [f"one label only ({labels}): a classifier needs two or more"])
        schema = Schema(pixel_names(pre), tuple(labels))
    index = {c: i for i, c in enumerate(schema.classes)}
    tables = []
    for s in found:
        unknown = sorted(set(s.labels) - set(index))
        if unknown:
            raise DataError(f"hospital {s.name} ({s.folder})",
                            [f"labels {unknown[:10]} are not among the job's agreed classes {list(schema.classes)}"])
        X, kept = decode(s, pre, spec.unreadable)
        y = np.array([index[s.labels[i]] for i in kept], dtype=np.int64)
        groups = group_ids([s.patients[i] for i in kept]) if s.patients is not None else None
        notes = {k: v for k, v in s.notes.items() if k != "manifest"}
        if len(kept) < len(s.paths):
            notes["skipped_unreadable"] = len(s.paths) - len(kept)
        tables.append(Table(X, y, s.name, groups=groups, notes=notes))
    return tables, schema


def _keep(s: Samples, classes: list[str]) -> Samples:
    mask = [lab in classes for lab in s.labels]
    return Samples(s.name, s.folder, [p for p, m in zip(s.paths, mask) if m], [lab for lab, m in zip(s.labels, mask) if m],
                   [p for p, m in zip(s.patients, mask) if m] if s.patients is not None else None, s.notes)


def describe_images(job, folder: Path, partition_id: int) -> dict:
    """What a hospital says about its images before anything is agreed (the deployment's census):
    its name, the pixel columns, the labels it holds, counts. Facts about the data, never a pixel."""
    from orchestrator.core.splits import hospital_name, own_split

    spec = job.data
    pre = Preprocess.of(spec, job.model.spatial_dims)
    samples = list_samples(folder, spec, hospital_name(folder.name))
    multilabel = job.model.head == "multilabel"
    if spec.classes and not multilabel:
        samples = _keep(samples, spec.classes)
    X, kept = decode(samples, pre, spec.unreadable)
    if multilabel:
        labels = sorted({f for i in kept for f in findings(samples.labels[i], spec)})
        y = multi_hot(samples, kept, {c: i for i, c in enumerate(labels)}, spec)
    else:
        labels = sorted({samples.labels[i] for i in kept})
        index = {c: i for i, c in enumerate(labels)}
        y = np.array([index[samples.labels[i]] for i in kept], dtype=np.int64)
    groups = group_ids([samples.patients[i] for i in kept]) if samples.patients is not None else None
    split = own_split(X, y, job, partition_id, groups)
    return {"name": samples.name, "features": list(pixel_names(pre)), "labels": labels, "rows": int(len(y)),
            "train_rows": int(len(split.y_train)), "missing": 0, "observed": [int(len(y))] * X.shape[1]}
