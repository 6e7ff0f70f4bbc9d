"""The data's types: a table of rows, the schema every party agrees on, a train/test split."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
