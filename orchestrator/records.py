"""Flower ArrayRecords <-> named numpy arrays, for the arithmetic both hospitals and strategies do."""
from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def from_state(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
