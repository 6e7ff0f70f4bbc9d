"""CSV files as tables: one file, or a directory with one file per hospital, checked cell by cell.

Every problem names the file (and the line): a missing target column, empty cells in it,
non-numeric features, files whose columns differ, a single class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.core.tables import Schema, Table
from orchestrator.spec.data import DataSpec
from orchestrator.spec.errors import DataError


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
    classes = tuple(label_str(v) for v in ordered)
    if len(classes) < 2:
        raise DataError(str(files[0]), [f"data.target: column '{target}' has a single class {classes}: nothing to learn"])
    return Schema(features, classes)


def label_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def frame_to_table(df, target: str, schema: Schema, name: str) -> Table:
    import pandas as pd

    X = df[list(schema.features)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
    if schema.regression:
        return Table(X, pd.to_numeric(df[target]).to_numpy(dtype=np.float32), name)
    index = {c: i for i, c in enumerate(schema.classes)}
    labels = [label_str(v) for v in df[target].tolist()]
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
