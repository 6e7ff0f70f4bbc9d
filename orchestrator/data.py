"""Tables, splits and imputation in plain numpy: shared by the runners and the hospitals.

Nothing here downloads: bundled sets come from scikit-learn's package data, the rest from CSV
files the user points at. Every problem with a file raises DataError naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.config import DataSpec
from orchestrator.errors import DataError


@dataclass
class Table:
    """Features (float32, NaN = missing) and integer labels of one data source."""

    X: np.ndarray
    y: np.ndarray
    name: str


@dataclass(frozen=True)
class Schema:
    """What every party must agree on: feature order and label encoding (never any rows).

    No classes: the target is a number (regression), y is float32.
    """

    features: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def regression(self) -> bool:
        return not self.classes

    def to_dict(self) -> dict:
        return {"features": list(self.features), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls(tuple(d["features"]), tuple(d["classes"]))


@dataclass
class Split:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    notes: dict = field(default_factory=dict)


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


def csv_files(spec: DataSpec) -> list[Path]:
    """The CSV file, or the directory's *.csv files sorted by name (one per hospital)."""
    p = Path(spec.path or "")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".csv" and f.is_file())
        if not files:
            raise DataError(str(p), ["directory holds no *.csv files: expected one CSV per hospital"])
        return files
    if not p.exists():
        raise DataError(str(p), ["data.path: file or directory does not exist"])
    return [p]


def read_frame(path: Path, target: str, site_column: str | None = None):
    """Read one CSV; check the target column and that every feature is numeric."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(str(path), ["file is empty: expected a header row and data rows"]) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(str(path), [f"cannot parse as CSV: {first}"]) from None
    problems = []
    if target not in df.columns:
        cols = ", ".join(map(str, df.columns[:12]))
        problems.append(f"data.target: column '{target}' not found (columns: {cols})")
    elif df[target].isna().any():
        rows = (df.index[df[target].isna()] + 2).tolist()[:5]
        problems.append(f"data.target: column '{target}' has empty cells (lines {rows})")
    if len(df) == 0:
        problems.append("no data rows under the header")
    if site_column is not None:
        if site_column not in df.columns:
            cols = ", ".join(map(str, df.columns[:12]))
            problems.append(f"federated.partition.site_column: column '{site_column}' not found (columns: {cols})")
        elif df[site_column].isna().any():
            rows = (df.index[df[site_column].isna()] + 2).tolist()[:5]
            problems.append(f"federated.partition.site_column: '{site_column}' has empty cells (lines {rows}): "
                            "every row must name its hospital")
    bad = []
    for col in df.columns:
        if col == target or col == site_column:
            continue
        converted = pd.to_numeric(df[col], errors="coerce")
        wrong = converted.isna() & df[col].notna()
        if wrong.any():
            bad.append(f"{col} (e.g. {df[col][wrong].iloc[0]!r} on line {int(wrong.idxmax()) + 2})")
    if bad:
        problems.append("non-numeric feature column(s): " + "; ".join(bad) + ": encode them as numbers")
    if problems:
        raise DataError(str(path), problems)
    return df


def csv_schema(frames: list, target: str, files: list[Path], regression: bool = False) -> Schema:
    """Agree on feature order (first file's) and the sorted union of labels across files
    (no classes for a regression target, which must be numeric)."""
    features = tuple(str(c) for c in frames[0].columns if c != target)
    problems = []
    for df, f in zip(frames[1:], files[1:]):
        cols = tuple(str(c) for c in df.columns if c != target)
        if set(cols) != set(features):
            missing = sorted(set(features) - set(cols))
            extra = sorted(set(cols) - set(features))
            problems.append(f"{f.name}: columns differ from {files[0].name} (missing {missing}, extra {extra})")
    if problems:
        raise DataError(str(files[0].parent), problems)
    if regression:
        import pandas as pd

        for df, f in zip(frames, files):
            values = pd.to_numeric(df[target], errors="coerce")
            if values.isna().any():
                line = int(values.isna().idxmax()) + 2
                raise DataError(str(f), [f"data.target: a regression target (model.head linear) must be numeric; "
                                         f"line {line} holds {df[target][values.isna()].iloc[0]!r}"])
        return Schema(features, ())
    labels = set()
    for df in frames:
        labels.update(df[target].tolist())
    try:
        ordered = sorted(labels)
    except TypeError:
        ordered = sorted(labels, key=str)
    classes = tuple(_label_str(v) for v in ordered)
    if len(classes) < 2:
        raise DataError(str(files[0]), [f"data.target: column '{target}' has a single class {classes}: nothing to learn"])
    return Schema(features, classes)


def _label_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def frame_to_table(df, target: str, schema: Schema, name: str) -> Table:
    import pandas as pd

    X = df[list(schema.features)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    if schema.regression:
        return Table(X, pd.to_numeric(df[target]).to_numpy(dtype=np.float32), name)
    index = {c: i for i, c in enumerate(schema.classes)}
    labels = [_label_str(v) for v in df[target].tolist()]
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise DataError(name, [f"data.target: labels {unknown} are not among the agreed classes {list(schema.classes)}"])
    y = np.asarray([index[lab] for lab in labels], dtype=np.int64)
    return Table(X, y, name)


def read_table(path: Path, target: str, schema: Schema | None = None, regression: bool = False
               ) -> tuple[Table, Schema]:
    df = read_frame(path, target)
    schema = schema or csv_schema([df], target, [path], regression)
    return frame_to_table(df, target, schema, path.stem), schema


# --------------------------------------------------------------------------- splits
def split_indices(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified when every class has two rows, else a plain shuffle; never an empty side."""
    n = len(y)
    rng = np.random.default_rng(seed)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    labels, counts = np.unique(y, return_counts=True)
    if np.issubdtype(y.dtype, np.integer) and len(labels) > 1 and counts.min() >= 2 and n_test >= len(labels) and n - n_test >= len(labels):
        test = []
        for lab in labels:
            idx = rng.permutation(np.flatnonzero(y == lab))
            k = max(1, int(round(len(idx) * test_fraction)))
            test.append(idx[: min(k, len(idx) - 1)])
        test_idx = np.sort(np.concatenate(test))
    else:
        test_idx = np.sort(rng.permutation(n)[:n_test])
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def column_fill(X: np.ndarray, how: str, fallback: np.ndarray | None = None) -> np.ndarray:
    """Per-column median/mean of observed cells; `fallback` where a column has none."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are handled below
        stat = np.nanmedian(X, axis=0) if how == "median" else np.nanmean(X, axis=0)
    if X.shape[0] == 0:
        stat = np.full(X.shape[1], np.nan, dtype=np.float32)
    empty = np.isnan(stat)
    if empty.any():
        stat = np.where(empty, fallback if fallback is not None else 0.0, stat)
    return stat.astype(np.float32)


def fill(X: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not np.isnan(X).any():
        return X
    return np.where(np.isnan(X), values[None, :], X).astype(np.float32)


def impute_split(split: Split, how: str, fallback: np.ndarray | None = None) -> Split:
    """Fill train and test from statistics of the training rows only."""
    values = column_fill(split.X_train, how, fallback)
    missing = int(np.isnan(split.X_train).sum() + np.isnan(split.X_test).sum())
    return Split(fill(split.X_train, values), split.y_train, fill(split.X_test, values), split.y_test,
                 {**split.notes, "imputed_cells": missing})


# --------------------------------------------------------------------------- one entry point
def load_source(job, schema: Schema | None = None, path: Path | None = None) -> tuple[list[Table], Schema]:
    """The job's data as tables (one per CSV file, else one) and the agreed schema.

    `schema` (already agreed) and `path` (one hospital's own file) serve the hospitals.
    `data.classes` keeps only the rows of those classes, relabelled in the order given.
    """
    spec = job.data
    where = str(path or spec.path or spec.source)
    if spec.source != "csv":
        table, found = generated(spec.source, spec.rows, job.seed) if spec.source in ("xor", "sequences") \
            else load_bundled(spec.source)
        if spec.classes:
            table, found = keep_classes(table, found, spec.classes, where)
        return [table], found
    files = [path] if path is not None else csv_files(spec)
    site = job.federated.partition.site_column if job.federated.partition.name == "natural" else None
    frames = [read_frame(f, spec.target, site) for f in files]
    if site is not None:  # one file, one hospital per value of the site column (sorted)
        if len(files) != 1:
            raise DataError(where, ["federated.partition.site_column: needs data.path to be one CSV file, "
                                    "not a directory"])
        groups = sorted(frames[0].groupby(site, sort=True), key=lambda kv: str(kv[0]))
        frames = [g.drop(columns=[site]).reset_index(drop=True) for _, g in groups]
        files = [Path(f"{name}.csv") for name, _ in groups]  # .stem is the site
    if spec.classes:
        frames = [df[df[spec.target].map(_label_str).isin(spec.classes)] for df in frames]
    agreed = schema
    if agreed is None:
        agreed = csv_schema(frames, spec.target, files, regression=job.model.head == "linear")
        if spec.classes:
            absent = [c for c in spec.classes if c not in agreed.classes]
            if absent:
                raise DataError(where, [f"data.classes: {absent} do not occur in column '{spec.target}'"])
            agreed = Schema(agreed.features, tuple(spec.classes))
    return [frame_to_table(df, spec.target, agreed, f.stem) for df, f in zip(frames, files)], agreed
