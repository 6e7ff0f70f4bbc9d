"""A segmentation's data: each image's mask read on its image's grid (`masks`), cached beside the
images' pixels (`tables.decode`), its label values agreed from the hospitals' counts, and the label
indices the network learns, mapped from disk like the pixels."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from orchestrator.core.imaging.folders import Samples, group_ids, hospital_folders, list_masked
from orchestrator.core.imaging.readers import Preprocess, UnreadableImage
from orchestrator.core.imaging.tables import CHUNK, _rel, cache_dir, decode, pixel_names
from orchestrator.core.tables import Schema, Table
from orchestrator.spec.errors import DataError


def decode_masks(samples: Samples, kept: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(kept images, size**dims) int32: each kept image's mask as label values on its image's grid,
    cached beside the images' pixels (`decode`). A mask that cannot label its image stops the job,
    naming it and its hospital."""
    from orchestrator.core.imaging.masks import BadMask, image_grid, read_mask

    assert samples.masks is not None
    pairs = [(samples.paths[i], samples.masks[i]) for i in kept]
    stats = [(str(m), m.stat().st_size, m.stat().st_mtime_ns, str(p)) for p, m in pairs]
    key = hashlib.sha256(json.dumps([stats, pre.size, pre.fit, pre.spacing, pre.dims, "masks", 1]).encode()
                         ).hexdigest()[:32]
    file = cache_dir() / f"{key}.masks.npy"
    if file.exists():
        try:
            return np.load(file, mmap_mode="c")
        except (OSError, ValueError):
            pass

    def one(pair: tuple[Path, Path]) -> np.ndarray | str:
        image, mask = pair
        try:
            return read_mask(mask, pre, image_grid(image, pre.dims))[0]
        except (BadMask, UnreadableImage) as exc:
            return str(exc)

    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{key}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(len(pairs), pre.size ** pre.dims))
    bad: list[str] = []
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(pairs), CHUNK):
            for i, labels in enumerate(pool.map(one, pairs[start:start + CHUNK]), start):
                if isinstance(labels, str):
                    bad.append(f"{_rel(pairs[i][1], samples.folder)}: {labels}")
                else:
                    out[i] = labels.reshape(-1)
    if bad:
        del out
        tmp.unlink(missing_ok=True)
        more = [f"... and {len(bad) - 8} more"] if len(bad) > 8 else []
        raise DataError(f"hospital {samples.name} ({samples.folder})", bad[:8] + more)
    out.flush()
    del out
    os.replace(tmp, file)
    return np.load(file, mmap_mode="c")


def _mask_values(masks: np.ndarray) -> dict[int, int]:
    """Each label value's pixel count in a hospital's masks (what it tells the others: never a mask)."""
    from orchestrator.core.splits import rows_per_chunk

    counts: dict[int, int] = {}
    step = rows_per_chunk(masks, 4)
    for i in range(0, len(masks), step):
        values, n = np.unique(masks[i:i + step], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    return counts


def agreed_values(counts: list[dict[int, int]], spec, where: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The label values every hospital's masks are read with and their names: data.classes names the
    values 0, 1, 2 ... in order; else the values any hospital's masks hold (from their counts), sorted."""
    if spec.classes:
        return tuple(range(len(spec.classes))), tuple(spec.classes)
    values = tuple(sorted({v for c in counts for v in c}))
    if len(values) < 2:
        raise DataError(where, [f"every mask holds the one label {list(values)}: a segmentation needs a "
                                "background and at least one labelled structure"])
    return values, tuple(str(v) for v in values)


def segmentation_tables(job, schema: Schema | None = None, path: Path | None = None) -> tuple[list[Table], Schema]:
    """The job's images and masks as tables: pixels as every image job's, y (images, pixels) of class
    indices; the label values agreed from the hospitals' masks (`schema` and `path`: a hospital's)."""
    spec = job.data
    pre = Preprocess.of(spec, job.model.spatial_dims)
    folders = [path] if path is not None else hospital_folders(spec, job.federated.partition.name == "natural")
    found = [list_masked(f, spec) for f in folders]
    decoded = []
    for s in found:
        X, kept = decode(s, pre, spec.unreadable)
        decoded.append((X, kept, decode_masks(s, kept, pre)))
    if schema is None:
        values, names = agreed_values([_mask_values(m) for _, _, m in decoded], spec, str(spec.path))
        schema = Schema(pixel_names(pre), names, segmentation=True, values=values)
    tables = []
    for s, (X, kept, masks) in zip(found, decoded):
        y = label_indices(masks, schema.values, s, kept)
        groups = group_ids([s.patients[i] for i in kept]) if s.patients is not None else None
        notes = {"skipped_unreadable": len(s.paths) - len(kept)} if len(kept) < len(s.paths) else {}
        tables.append(Table(X, y, s.name, groups=groups, notes=notes))
    return tables, schema


def label_indices(masks: np.ndarray, values: tuple[int, ...], samples: Samples | None = None,
                  kept: np.ndarray | None = None) -> np.ndarray:
    """Masks of label values -> (rows, pixels) int64 class indices; a value outside `values` is an
    error naming the masks that hold it. A cached (memory-mapped) masks file gets its indices in a
    mapped file beside it: a hospital's masks never sit in memory whole."""
    lut = np.asarray(values, dtype=np.int64)
    source = getattr(masks, "filename", None)
    target = None
    y: np.ndarray
    if source:
        digest = hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()[:16]
        target = Path(source).with_name(f"{Path(source).stem}.labels-{digest}.npy")
        if target.exists():
            try:
                return np.load(target, mmap_mode="c")
            except (OSError, ValueError):
                pass
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
        y = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=masks.shape)
    else:
        y = np.empty(masks.shape, dtype=np.int64)
    bad: list[tuple[int, list[int]]] = []
    for i in range(len(masks)):
        row = np.asarray(masks[i])
        idx = np.searchsorted(lut, row).clip(0, len(lut) - 1)
        wrong = lut[idx] != row
        if wrong.any():
            bad.append((i, sorted(set(row[wrong].tolist()))[:5]))
        y[i] = idx
    if bad:
        if target is not None:
            del y
            tmp.unlink(missing_ok=True)
        if samples is None or kept is None or samples.masks is None:
            raise DataError("masks", [f"labels {bad[0][1]} are not among the agreed labels {list(values)}"])
        shown = [f"{_rel(samples.masks[kept[i]], samples.folder)}: labels {v} are not among the job's labels "
                 f"{list(values)}" for i, v in bad[:8]]
        raise DataError(f"hospital {samples.name} ({samples.folder})", shown + [
            "relabel these masks, or name every label value in data.classes (values 0, 1, 2 ... in order)"])
    if target is not None:
        del y   # closes the mapping: its pages are written
        os.replace(tmp, target)
        return np.load(target, mmap_mode="c")
    return y


def describe_masked(job, folder: Path, partition_id: int) -> dict:
    """What a hospital says about its images and masks before anything is agreed (the deployment's
    census): its name, the pixel columns, the label values its masks hold and their pixel counts."""
    from orchestrator.core.splits import hospital_name, own_split

    spec = job.data
    pre = Preprocess.of(spec, job.model.spatial_dims)
    masked = list_masked(folder, spec, hospital_name(folder.name))
    X, kept = decode(masked, pre, spec.unreadable)
    counts = _mask_values(decode_masks(masked, kept, pre))
    groups = group_ids([masked.patients[i] for i in kept]) if masked.patients is not None else None
    split = own_split(X, np.zeros(len(kept), dtype=np.int64), job, partition_id, groups)
    return {"name": masked.name, "features": list(pixel_names(pre)), "labels": sorted(counts),
            "label_pixels": {str(k): v for k, v in counts.items()}, "rows": int(len(kept)),
            "train_rows": int(len(split.y_train)), "missing": 0, "observed": [int(len(kept))] * X.shape[1]}
