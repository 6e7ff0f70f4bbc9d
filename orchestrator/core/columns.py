"""What a CSV's feature columns are: numbers, categories (text), or what cannot be a feature
(identifiers, dates), and how categories become numbers.

Categories are agreed without moving a row: each hospital counts the values of its own text
columns (`category_counts`), the coordinator adds the counts up and fixes one vocabulary per
column (`agree_vocabulary`), and every hospital then one-hot encodes its rows with it
(`encode`): the vocabulary's values, then `other` for a value it does not hold (a rare one, or one
only seen at evaluation). A missing cell is no category at all (all zeros).
"""
from __future__ import annotations

import re

import numpy as np

OTHER = "other"
_ID_WORDS = re.compile(r"(^|[_\s.-])(id|pid|uuid|guid|mrn|ssn)$|^(patient|subject|record|case|encounter)([_\s.-]?(id|no|number|nr))?$",
                       re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z](ID|Id)$")   # PatientID, studyId (case matters: not 'valid', 'lipid')


class _IdName:
    """Does a column's name say it identifies rows?"""

    @staticmethod
    def search(name: str) -> bool:
        return bool(_ID_WORDS.search(name) or _CAMEL_ID.search(name))


ID_NAME = _IdName()


def text_value(v) -> str:
    """A category as text: 1.0 and 1 are the same category '1'."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def kind_of(series, name: str) -> tuple[str, str]:
    """('number' | 'category' | 'identifier' | 'date', an example value). Missing cells don't count."""
    import pandas as pd

    values = series.dropna()
    numeric = pd.to_numeric(values, errors="coerce")
    unique_per_row = len(values) >= 20 and values.nunique() == len(values)
    if not numeric.isna().any():
        # a unique integer per row named like an identifier (PID, patient_id, StudyID ...)
        if unique_per_row and ID_NAME.search(str(name)) and np.allclose(numeric, np.round(numeric)):
            return "identifier", text_value(values.iloc[0])
        return "number", ""
    text = values.astype(str).str.strip()
    example = text.iloc[0] if len(text) else ""
    if _dates(text):
        return "date", example
    if unique_per_row or (ID_NAME.search(str(name)) and values.nunique() > 0.9 * len(values)):
        return "identifier", example
    return "category", example


def _dates(text) -> bool:
    import warnings

    import pandas as pd

    sample = text.head(200)
    looks = sample.str.contains(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{4}-\d{2}-\d{2}T", regex=True)
    if len(sample) == 0 or looks.mean() < 0.9:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.9)


def category_counts(df, columns: list[str]) -> dict[str, dict[str, int]]:
    """One hospital's counts of each value of its text columns: aggregates, never a row."""
    out = {}
    for col in columns:
        counts = df[col].dropna().map(text_value).value_counts()
        out[col] = {str(k): int(v) for k, v in counts.items()}
    return out


def agree_vocabulary(counts: list[dict[str, dict[str, int]]], max_categories: int) -> dict[str, tuple[str, ...]]:
    """Summed over hospitals, the `max_categories` most frequent values of each column (ties by
    name), in name order; everything else will be `other`."""
    columns = list(dict.fromkeys(c for hospital in counts for c in hospital))
    vocab = {}
    for col in columns:
        total: dict[str, int] = {}
        for hospital in counts:
            for value, n in hospital.get(col, {}).items():
                total[value] = total.get(value, 0) + n
        kept = sorted(total, key=lambda v: (-total[v], v))[:max_categories]
        vocab[col] = tuple(sorted(v for v in kept if v != OTHER))
    return vocab


def encoded_names(columns: list[str], vocab: dict[str, tuple[str, ...]]) -> list[str]:
    """The model's input features: a number column as itself, a category column as one input per
    agreed value plus `col=other`."""
    names = []
    for col in columns:
        if col in vocab:
            names += [f"{col}={v}" for v in vocab[col]] + [f"{col}={OTHER}"]
        else:
            names.append(col)
    return names


def encode(df, columns: list[str], vocab: dict[str, tuple[str, ...]]) -> np.ndarray:
    """Rows as float32 model inputs (NaN = a missing number; a missing category is all zeros)."""
    import pandas as pd

    parts = []
    for col in columns:
        if col not in vocab:
            parts.append(pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float32)[:, None])
            continue
        values = vocab[col]
        index = {v: i for i, v in enumerate(values)}
        block = np.zeros((len(df), len(values) + 1), dtype=np.float32)
        for row, v in enumerate(df[col].tolist()):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            block[row, index.get(text_value(v), len(values))] = 1.0
        parts.append(block)
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(df), 0), dtype=np.float32)
