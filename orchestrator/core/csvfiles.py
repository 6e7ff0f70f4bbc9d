"""CSV files as tables: one file, or a directory with one file per hospital, checked cell by cell.

Every problem names the file (and the line): a missing target column, empty cells in it,
identifier or date columns, files whose columns differ, a single class. Text columns are
categories (`core.columns`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.core.tables import Schema, Table
from orchestrator.spec.data import DataSpec
from orchestrator.spec.errors import DataError


def csv_files(spec: DataSpec) -> list[Path]:
    """The CSV file, or the directory's *.csv files (or, with `data.columns`, the headerless
    *.data files UCI ships) sorted by name (one per hospital)."""
    p = Path(spec.path or "")
    if p.is_dir():
        kinds = (".csv", ".data") if spec.columns else (".csv",)
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in kinds and f.is_file())
        if not files:
            raise DataError(str(p), [f"directory holds no {' or '.join('*' + k for k in kinds)} files: "
                                     "expected one CSV per hospital"])
        return files
    if not p.exists():
        raise DataError(str(p), ["data.path: file or directory does not exist"])
    return [p]


def read_frame(path: Path, spec: DataSpec, site_column: str | None = None):
    """Read one CSV as `spec` says (header or `data.columns`, `data.na_values`, `data.drop`,
    `data.features`, `data.relabel`); check the target and every feature column: numbers and text
    (categories) are features, identifiers and dates are refused with the key that leaves them out."""
    import pandas as pd

    target = spec.target
    try:
        df = pd.read_csv(path, header=None if spec.columns else "infer", names=spec.columns,
                         na_values=spec.na_values or None, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(str(path), ["file is empty: expected a header row and data rows"]) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(str(path), [f"cannot parse as CSV: {first}"]) from None
    first_line = 1 if spec.columns else 2   # the file line of row 0
    problems = []
    if spec.columns:
        found = pd.read_csv(path, header=None, nrows=1).shape[1]
        if found != len(spec.columns):
            raise DataError(str(path), [f"data.columns: {len(spec.columns)} names given, the file's rows have "
                                        f"{found} values"])
    cols = ", ".join(map(str, df.columns[:16]))
    for key, names in (("data.drop", spec.drop), ("data.features", spec.features or [])):
        unknown = [c for c in names if c not in df.columns]
        if unknown:
            problems.append(f"{key}: {unknown} not among the file's columns ({cols})")
    dropped = 0
    if target not in df.columns:
        problems.append(f"data.target: column '{target}' not found (columns: {cols})")
    elif df[target].isna().any() and spec.missing_labels == "error":
        rows = (df.index[df[target].isna()] + first_line).tolist()[:5]
        problems.append(f"data.target: column '{target}' has {int(df[target].isna().sum())} empty cells (lines "
                        f"{rows}): fill them, or set data.missing_labels: drop to leave those rows out")
    else:
        if df[target].isna().any():   # missing_labels: drop, counted per hospital in the run
            dropped = int(df[target].isna().sum())
            df = df[df[target].notna()].reset_index(drop=True)
        if spec.relabel is not None:
            raw = df[target].map(label_str)
            unknown = sorted(set(raw) - set(spec.relabel))
            if unknown:
                problems.append(f"data.relabel: target values {unknown} are not mapped (mapped: {sorted(spec.relabel)})")
            else:
                df[target] = raw.map(spec.relabel)
    if len(df) == 0:
        problems.append("no data rows under the header" if not dropped else f"all {dropped} rows lack a label")
    if site_column is not None:
        if site_column not in df.columns:
            problems.append(f"federated.partition.site_column: column '{site_column}' not found (columns: {cols})")
        elif df[site_column].isna().any():
            rows = (df.index[df[site_column].isna()] + first_line).tolist()[:5]
            problems.append(f"federated.partition.site_column: '{site_column}' has empty cells (lines {rows}): "
                            "every row must name its hospital")
    if problems:
        raise DataError(str(path), problems)
    keep = [c for c in df.columns if c not in spec.drop and (spec.features is None or c in spec.features
                                                             or c in (target, site_column))]
    df = df[keep]
    from orchestrator.core.columns import kind_of

    for col in df.columns:
        if col in (target, site_column):
            continue
        kind, example = kind_of(df[col], str(col))
        if kind == "identifier":
            problems.append(f"column '{col}' looks like an identifier (a different value on every row, e.g. "
                            f"{example!r}): not a feature; leave it out with data.drop: [{col}]")
        elif kind == "date":
            problems.append(f"column '{col}' holds dates (e.g. {example!r}): not a feature as they are; leave it "
                            f"out with data.drop: [{col}] (or keep only named columns with data.features)")
    if problems:
        raise DataError(str(path), problems)
    df.attrs["dropped_unlabelled"] = dropped
    return df


def text_columns(df, target: str) -> list[str]:
    """The feature columns holding text (categories)."""
    import pandas as pd

    return [str(c) for c in df.columns if c != target
            and pd.to_numeric(df[c].dropna(), errors="coerce").isna().any()]


def csv_schema(frames: list, target: str, files: list[Path], regression: bool = False,
               max_categories: int = 20) -> Schema:
    """Agree on feature order (first file's), the vocabulary of the text columns (from each file's
    counts of its values) and the sorted union of labels across files (no classes for a
    regression target, which must be numeric)."""
    from orchestrator.core.columns import agree_vocabulary, category_counts

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
    text = sorted({c for df in frames for c in text_columns(df, target)}, key=features.index)
    vocab = agree_vocabulary([category_counts(df, text) for df in frames], max_categories) if text else {}
    if regression:
        return Schema.of(features, (), vocab)
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
    return Schema.of(features, classes, vocab)


def label_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def frame_to_table(df, target: str, schema: Schema, name: str) -> Table:
    import pandas as pd

    from orchestrator.core.columns import encode

    X = encode(df, list(schema.raw_columns), schema.vocabulary)
    if schema.regression:
        return Table(X, pd.to_numeric(df[target]).to_numpy(dtype=np.float32), name)
    index = {c: i for i, c in enumerate(schema.classes)}
    labels = [label_str(v) for v in df[target].tolist()]
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise DataError(name, [f"data.target: labels {unknown} are not among the agreed classes {list(schema.classes)}"])
    y = np.asarray([index[lab] for lab in labels], dtype=np.int64)
    return Table(X, y, name)
