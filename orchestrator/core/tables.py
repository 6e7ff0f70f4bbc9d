"""The data's types: a table of rows, the schema every party agrees on, a train/test split."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Table:
    """Features (float32, NaN = missing) and integer labels (a regression: numbers; multi-label:
    (rows, findings) of 0/1) of one data source; `groups`: each row's
    patient (rows of one patient stay on one side of every split); `notes`: what reading it counted."""

    X: np.ndarray
    y: np.ndarray
    name: str
    groups: np.ndarray | None = None
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Schema:
    """What every party must agree on: feature order and label encoding (never any rows).

    No classes: the target is a number (regression), y is float32.
    """

    features: tuple[str, ...]              # the model's inputs (a text column: one per agreed value)
    classes: tuple[str, ...]
    columns: tuple[str, ...] = ()          # the files' feature columns, in order (() = the features)
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()   # text column -> its agreed values
    multilabel: bool = False               # classes are findings, several per row: y is (rows, findings) 0/1
    segmentation: bool = False             # classes label pixels: y is (rows, pixels) of class indices
    values: tuple[int, ...] = ()           # segmentation: the masks' label value of each class

    @property
    def regression(self) -> bool:
        return not self.classes

    @property
    def task(self) -> str:
        """classification | regression | multilabel | segmentation: which metrics, sums and loss."""
        if self.segmentation:
            return "segmentation"
        return "regression" if self.regression else "multilabel" if self.multilabel else "classification"

    @property
    def raw_columns(self) -> tuple[str, ...]:
        return self.columns or self.features

    @property
    def vocabulary(self) -> dict[str, tuple[str, ...]]:
        return dict(self.categories)

    def to_dict(self) -> dict:
        d: dict = {"features": list(self.features), "classes": list(self.classes)}
        if self.categories:
            d.update(columns=list(self.columns), categories={c: list(v) for c, v in self.categories})
        if self.multilabel:
            d["multilabel"] = True
        if self.segmentation:
            d.update(segmentation=True, values=list(self.values))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls(tuple(d["features"]), tuple(d["classes"]), tuple(d.get("columns", ())),
                   tuple((c, tuple(v)) for c, v in d.get("categories", {}).items()), bool(d.get("multilabel", False)),
                   bool(d.get("segmentation", False)), tuple(int(v) for v in d.get("values", ())))

    @classmethod
    def of(cls, columns, classes, vocabulary: dict[str, tuple[str, ...]]) -> Schema:
        """From the raw feature columns and the agreed vocabulary of the text ones."""
        from orchestrator.core.columns import encoded_names

        columns = tuple(columns)
        if not vocabulary:
            return cls(columns, tuple(classes))
        return cls(tuple(encoded_names(list(columns), vocabulary)), tuple(classes), columns,
                   tuple((c, tuple(vocabulary[c])) for c in columns if c in vocabulary))


@dataclass
class Split:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    notes: dict = field(default_factory=dict)
