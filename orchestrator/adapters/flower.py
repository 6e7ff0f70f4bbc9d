"""Flower 1.42's private API, in one room: what Consortium does with Flower beyond its public API.

An upgrade of Flower re-checks this module (tests/unit/test_adapters.py names the version it was
written against and fails on another) and nothing else.

Arrays. Flower's `Array`, as the hospitals' replies carry it, made and read without re-parsing `.npy`.

Every reply carries each of the model's arrays as `.npy` bytes, and Flower's strategies read every
one back with `Array.numpy()`: `np.load`, whose header parser (`ast.literal_eval`) was most of a
round's aggregation (bench/README.md, "figures behind the code"). This `Array` is Flower's own, with the
same fields and byte for byte the same data; it only remembers where its header ends, so
`numpy()` is `np.frombuffer` of the rest. Anything it cannot vouch for (data replaced since, an
unusual dtype) goes through Flower's `np.load`.

`to_numpy` reads any Flower `Array` the same way when its bytes start with the header `np.save`
writes for its dtype and shape (the global model's arrays, which Flower's strategies make), so the
hospitals and the central evaluation load a model without `np.load` either.

Its qualified name is Flower's (`Array`): a message that leaves the process is deflated under that
name and inflated as Flower's own class, and pickle finds this module's `Array`.

Records. Flower's `RecordDict` and `MetricRecord`, as the hospitals' replies carry them, made cheaply.

A round's replies are read many times over by Flower's strategies: every access to
`RecordDict.metric_records` (or `array_records`, `config_records`) builds a new view and writes each
record back into the RecordDict through its type checks, and `aggregate_metricrecords` and
`aggregate_arrayrecords` ask once per reply, the reply consistency check once more, our round report
again (bench/README.md, "figures behind the code"). `Records` is Flower's `RecordDict` whose views
hold the same records and mirror writes the same way, built without re-checking records it
already checked, and kept until the RecordDict changes. `metric_record` fills a `MetricRecord` with the plain
`int`/`float` values a reply holds without Flower's per-item `TypedDict` checks; anything else
(lists, numpy scalars, a wrong type) goes through them as before.

`Records` carries Flower's qualified name: a message that leaves the process is deflated under
that name and inflated as Flower's own `RecordDict`; pickle finds this module's class.

Messages. The inline and vectorized engines are a Flower `Grid` in this process: they stamp a
message's id, run and sender as Flower's grid does (`stamp`), give each hospital its own copy with
the same metadata (`copy_metadata`), and set the task identity Flower's ServerApp process sets
(`server_identity`).
"""
from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import Array as FlowerArray
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.app import RecordDict as FlowerRecordDict
from flwr.app.message.recorddict import _SyncedDict
from flwr.supercore.task_identity import TaskIdentity

WRITTEN_FOR = ("flwr", "1.42.0")


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

    __hash__ = None  # type: ignore[assignment]  # mutable, as Flower's Array


Array.__qualname__ = "Array"


def metric_record(values: dict) -> MetricRecord:
    """`MetricRecord(values)`, its plain str -> int/float items set without Flower's checks."""
    record = MetricRecord()
    data = record.__dict__.get("_data")
    for k, v in values.items():
        if data is not None and type(k) is str and type(v) in (int, float):
            data[k] = v
        else:
            record[k] = v   # Flower checks it (and refuses what a MetricRecord cannot hold)
    return record


class Records(FlowerRecordDict):
    """`flwr.app.RecordDict` with views built from the records it already holds, once until it
    changes (a write through a view is a write to this RecordDict, so it is a change too)."""

    def _view(self, kind: type):
        views = self.__dict__.setdefault("_views", {})
        if kind not in views:
            view = _SyncedDict[kind](self, kind)  # type: ignore[valid-type]  # a class chosen at run time
            data = view.__dict__["_data"]
            for key, record in self.items():
                if isinstance(record, kind):
                    data[key] = record
            views[kind] = view
        return views[kind]

    def __setitem__(self, key, value) -> None:
        self.__dict__.pop("_views", None)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.__dict__.pop("_views", None)
        super().__delitem__(key)

    @property
    def array_records(self):
        return self._view(ArrayRecord)

    @property
    def metric_records(self):
        return self._view(MetricRecord)

    @property
    def config_records(self):
        return self._view(ConfigRecord)


Records.__qualname__ = "RecordDict"
RecordDict = Records   # where pickle looks for a class of that qualified name in this module


def stamp(msg: Message, run_id: int, sender: int) -> None:
    """What Flower's grid sets on a message it sends: a new id, its run and its sender."""
    msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    msg.metadata.__dict__["_run_id"] = run_id
    msg.metadata.__dict__["_src_node_id"] = sender


def copy_metadata(own: Message, msg: Message) -> None:
    """`own` (a hospital's copy of `msg`) takes `msg`'s metadata: its id, run, sender, type, group."""
    own.metadata.__dict__.update({k: v for k, v in msg.metadata.__dict__.items() if k != "_content"})


@contextmanager
def server_identity(run_id: int, node_id: int) -> Iterator[None]:
    """Messages take their run and sender from the identity of the task that makes them; Flower sets
    it in its own ServerApp process, the inline engine sets it for the duration of the job."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


# Flower fixes a SuperNode's heartbeat at 30 s; the SuperLink accepts 10 to 1800 s and marks a node
# offline after twice the interval it announced (HEARTBEAT_PATIENCE).
HEARTBEAT_RANGE_S = (10, 1800)


def heartbeat_every(seconds: int) -> None:
    """This process's SuperNode announces and sends heartbeats every `seconds` (`HEARTBEAT_RANGE_S`)."""
    import flwr.supercore.heartbeat as sender
    import flwr.supernode.fleet_http_connection as connection

    low, high = HEARTBEAT_RANGE_S
    if not low <= seconds <= high:
        raise ValueError(f"a SuperNode's heartbeat interval must lie in [{low:g}, {high:g}] s (the SuperLink "
                         f"refuses others); got {seconds:g}")
    connection.HEARTBEAT_DEFAULT_INTERVAL = seconds
    sender.HEARTBEAT_DEFAULT_INTERVAL = seconds


def wire_objects(content) -> tuple[str, list[bytes]]:
    """(SHA-256, serialized objects) of a message's content as Flower's gRPC transport sends it: the
    content's object id (a hash over every object below it) and each object's bytes. Flower caches
    each array's chunks (memoryviews) on the array when asked for them; dropped here, so the content
    stays deep-copyable (the inline engine copies what crosses its grid)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    objects = get_all_nested_objects(content)
    blobs = [o.deflate() for o in objects.values()]
    for o in objects.values():
        if isinstance(o, FlowerArray):
            o.__dict__.pop("_chunks", None)
    return content.object_id, blobs
