"""Flower's `Array`, as the hospitals' replies carry it, made and read without re-parsing `.npy`.

Every reply carries each of the model's arrays as `.npy` bytes, and Flower's strategies read every
one back with `Array.numpy()`: `np.load`, whose header parser (`ast.literal_eval`) was most of a
round's aggregation (1000 hospitals: 6 000 headers a round). This `Array` is Flower's own, with the
same fields and byte for byte the same data; it only remembers where its header ends, so
`numpy()` is `np.frombuffer` of the rest. Anything it cannot vouch for (data replaced since, an
unusual dtype) goes through Flower's `np.load`.

`to_numpy` reads any Flower `Array` the same way when its bytes start with the header `np.save`
writes for its dtype and shape (the global model's arrays, which Flower's strategies make), so the
hospitals and the central evaluation load a model without `np.load` either.

Its qualified name is Flower's (`Array`): a message that leaves the process is deflated under that
name and inflated as Flower's own class, and pickle finds this module's `Array`.
"""
from __future__ import annotations

import io

import numpy as np
from flwr.app import Array as FlowerArray

_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The `.npy` header `np.save` writes for an array of this dtype (`a.dtype.str`) and shape."""
    key = (dtype, shape)
    if key not in _HEADERS:
        buf = io.BytesIO()
        np.save(buf, np.empty(shape, dtype=np.dtype(dtype)), allow_pickle=False)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        _HEADERS[key] = buf.getvalue()[: len(buf.getvalue()) - nbytes]
    return _HEADERS[key]


_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """`str(dtype)`, what Flower records as an Array's dtype (numpy computes it in Python each time)."""
    if dtype not in _NAMES:
        _NAMES[dtype] = str(dtype)
    return _NAMES[dtype]


def to_numpy(a: FlowerArray) -> np.ndarray:
    """`a.numpy()`, without parsing the header when it is the one `np.save` writes for `a`'s dtype
    and shape (checked byte for byte); anything else goes through Flower's `np.load`."""
    if isinstance(a, Array):
        return a.numpy()
    try:
        dtype = np.dtype(a.dtype)
        header = npy_header(dtype.str, tuple(a.shape))
    except (TypeError, ValueError):
        return a.numpy()
    data = a.data
    if a.stype != "numpy.ndarray" or dtype.hasobject or not data.startswith(header):
        return a.numpy()
    return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(a.shape).copy()


def to_torch_state(record) -> dict:
    """`record.to_torch_state_dict()`, each array read by `to_numpy`."""
    import torch

    return {k: torch.from_numpy(to_numpy(v)) for k, v in record.items()}


class Array(FlowerArray):
    """`flwr.app.Array(dtype, shape, "numpy.ndarray", data)` for a C-ordered numpy array."""

    def __init__(self, a: np.ndarray):   # noqa: D107 - Flower's constructor checks, not repeated
        if not a.flags.c_contiguous:
            a = a.copy(order="C")   # not np.ascontiguousarray: it makes a 0-d array 1-d
        header = npy_header(a.dtype.str, a.shape)
        # what FlowerArray.__setattr__ leaves on a new object: dirty, no cached id or chunks
        self.__dict__.update(dtype=_dtype_name(a.dtype), shape=tuple(a.shape), stype="numpy.ndarray",
                             data=header + a.tobytes(), _is_dirty=True, _header=header, _np_dtype=a.dtype)

    def numpy(self) -> np.ndarray:
        header, data = self.__dict__.get("_header"), self.data
        if header is None or not data.startswith(header):
            return super().numpy()
        return np.frombuffer(data, dtype=self.__dict__["_np_dtype"], offset=len(header)).reshape(self.shape).copy()

    def __setattr__(self, name: str, value) -> None:
        if name in ("dtype", "shape", "stype", "data"):
            self.__dict__.pop("_header", None)   # no longer what this object wrote
        super().__setattr__(name, value)

    def __eq__(self, other) -> bool:
        if not isinstance(other, FlowerArray):
            return NotImplemented
        return (self.dtype, self.shape, self.stype, self.data) == (other.dtype, other.shape, other.stype, other.data)

    __hash__ = None


Array.__qualname__ = "Array"
