"""Tables and data sources in plain numpy: shared by the runners and the hospitals.

Nothing here downloads: bundled sets come from scikit-learn's package data, the rest from CSV
files the user points at (`core.csvfiles`). Every problem with a file raises DataError naming
the file. Splits and imputation are in `core.splits`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.core.tables import Schema, Split, Table  # noqa: F401 - Split: the data's types, importable from here
from orchestrator.core.csvfiles import csv_files, csv_schema, frame_to_table, label_str, read_frame
from orchestrator.spec.errors import DataError


# --------------------------------------------------------------------------- sources
_MEASURES = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
             "concave points", "symmetry", "fractal dimension")
_BUNDLED = {
    # file in scikit-learn's package data, feature names, class names (as scikit-learn names them)
    "breast_cancer": ("breast_cancer.csv", [f"mean {m}" for m in _MEASURES] + [f"{m} error" for m in _MEASURES]
                      + [f"worst {m}" for m in _MEASURES], ("malignant", "benign")),
    "wine": ("wine_data.csv", ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
                               "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
                               "od280/od315_of_diluted_wines", "proline"], ("class_0", "class_1", "class_2")),
    "digits": ("digits.csv.gz", [f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
               tuple(str(d) for d in range(10))),
    # regression: disease progression one year after baseline; raw (unscaled) values
    "diabetes": ("diabetes_data_raw.csv.gz", ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], ()),
}


def generated(name: str, rows: int, seed: int) -> tuple[Table, Schema]:
    """Small tasks made from the seed, for the primer examples (nothing is downloaded).

    xor: two noisy coordinates near the corners of the unit square, label x1 XOR x2.
    sequences: 20 noisy steps that rise, fall, or rise then fall (label), at a random level and
    slope, so the class is in the order of the steps, not in their mean.
    """
    rng = np.random.default_rng(seed + 7919)
    if name == "xor":
        corners = rng.integers(0, 2, size=(rows, 2))
        X = (corners + rng.normal(0, 0.15, size=(rows, 2))).astype(np.float32)
        return Table(X, (corners[:, 0] ^ corners[:, 1]).astype(np.int64), name), Schema(("x1", "x2"), ("0", "1"))
    if name == "sequences":
        steps = 20
        t = np.linspace(0.0, 1.0, steps)
        y = rng.integers(0, 3, size=rows)
        shape = np.stack([t, 1.0 - t, 1.0 - np.abs(2.0 * t - 1.0)])[y]
        X = rng.normal(0, 1, (rows, 1)) + rng.uniform(0.6, 1.6, (rows, 1)) * shape + rng.normal(0, 0.25, (rows, steps))
        features = tuple(f"step_{i:02d}" for i in range(steps))
        return Table(X.astype(np.float32), y.astype(np.int64), name), Schema(features, ("rise", "fall", "peak"))
    raise ValueError(f"unknown generated dataset {name!r}")


def load_bundled(name: str) -> tuple[Table, Schema]:
    """scikit-learn's bundled copies, read straight from its package data.

    Reading the files directly instead of through `sklearn.datasets` saves ~3 s of imports in every
    process that loads them (each simulated hospital does); tests check both give the same arrays.
    """
    import importlib.util

    filename, features, classes = _BUNDLED[name]
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data.source {name}", ["scikit-learn is not installed: it ships the bundled datasets"])
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if name == "diabetes":
        X = np.loadtxt(folder / filename, dtype=np.float64)
        y = np.loadtxt(folder / "diabetes_target.csv.gz", dtype=np.float64)
        return Table(X.astype(np.float32), y.astype(np.float32), name), Schema(tuple(features), classes)
    skip = 0 if name == "digits" else 1  # the others open with a "rows,cols,class names" line
    raw = np.loadtxt(folder / filename, delimiter=",", skiprows=skip, dtype=np.float64)
    table = Table(raw[:, :-1].astype(np.float32), raw[:, -1].astype(np.int64), name)
    return table, Schema(tuple(features), classes)


def keep_classes(table: Table, schema: Schema, wanted: list[str], where: str) -> tuple[Table, Schema]:
    """Only the rows of `wanted` classes, relabelled 0..k-1 in the order given (data.classes)."""
    unknown = [c for c in wanted if c not in schema.classes]
    if unknown:
        raise DataError(where, [f"data.classes: {unknown} not among the classes {list(schema.classes)}"])
    if len(set(wanted)) < 2:
        raise DataError(where, [f"data.classes: {wanted} keeps fewer than two classes: nothing to learn"])
    old = [schema.classes.index(c) for c in wanted]
    mask = np.isin(table.y, old)
    remap = np.full(len(schema.classes), -1, dtype=np.int64)
    remap[old] = np.arange(len(old))
    return Table(table.X[mask], remap[table.y[mask]], table.name), Schema(schema.features, tuple(wanted))


def hospital_paths(job) -> list[Path]:
    """Each hospital's own file (csv) or folder (images) under data.path, in partition-id order."""
    if job.data.source == "images":
        from orchestrator.core.imaging.folders import hospital_folders

        return hospital_folders(job.data, natural=True)
    return csv_files(job.data)


def load_source(job, schema: Schema | None = None, path: Path | None = None) -> tuple[list[Table], Schema]:
    """The job's data as tables (one per CSV file, else one) and the agreed schema.

    `schema` (already agreed) and `path` (one hospital's own file) serve the hospitals.
    `data.classes` keeps only the rows of those classes, relabelled in the order given.
    """
    spec = job.data
    where = str(path or spec.path or spec.source)
    if spec.source == "images" and job.model.head == "segmentation":   # an image and a mask per case
        from orchestrator.core.imaging.masked import segmentation_tables

        return segmentation_tables(job, schema, path)
    if spec.source == "images":
        from orchestrator.core.imaging.tables import image_tables

        return image_tables(job, schema, path)
    if spec.source != "csv":
        table, found = generated(spec.source, spec.rows, job.seed) if spec.source in ("xor", "sequences") \
            else load_bundled(spec.source)
        if spec.classes:
            table, found = keep_classes(table, found, spec.classes, where)
        return [table], found
    files = [path] if path is not None else csv_files(spec)
    site = job.federated.partition.site_column if job.federated.partition.name == "natural" else None
    frames = [read_frame(f, spec, site) for f in files]
    if site is not None:  # one file, one hospital per value of the site column (sorted)
        if len(files) != 1:
            raise DataError(where, ["federated.partition.site_column: needs data.path to be one CSV file, "
                                    "not a directory"])
        groups = sorted(frames[0].groupby(site, sort=True), key=lambda kv: str(kv[0]))
        frames = [g.drop(columns=[site]).reset_index(drop=True) for _, g in groups]
        files = [Path(f"{name}.csv") for name, _ in groups]  # .stem is the site
    if spec.classes:
        frames = [df[df[spec.target].map(label_str).isin(spec.classes)] for df in frames]
    agreed = schema
    if agreed is None:
        agreed = csv_schema(frames, spec.target, files, regression=job.model.head == "linear",
                            max_categories=spec.max_categories)
        if spec.classes:
            absent = [c for c in spec.classes if c not in agreed.classes]
            if absent:
                raise DataError(where, [f"data.classes: {absent} do not occur in column '{spec.target}'"])
            agreed = Schema(agreed.features, tuple(spec.classes), agreed.columns, agreed.categories)
    tables = [frame_to_table(df, spec.target, agreed, f.stem) for df, f in zip(frames, files)]
    for table, df in zip(tables, frames):
        if df.attrs.get("dropped_unlabelled"):   # data.missing_labels: drop
            table.notes["dropped_unlabelled"] = int(df.attrs["dropped_unlabelled"])
    return tables, agreed
