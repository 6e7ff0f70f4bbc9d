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


def poll_every(seconds: float, hot_s: float = 30.0) -> None:
    """This process's SuperNode asks the SuperLink for a message every `seconds` for `hot_s` after
    the last one it got (a run is going on), and as Flower does otherwise; and looks for its
    ClientApp's reply every `seconds`. Flower 1.42 sleeps a fixed 3 s between empty pulls and
    0.5 s between looks (`flwr.supernode.start_client_internal`): most of a deployed round on a
    fast link, while an idle federation needs no more than Flower's pace."""
    import time

    import flwr.supernode.start_client_internal as node

    last = {"message": float("-inf")}

    class _Clock:
        """`time` as that module sees it, with its waits cut short."""

        def __getattr__(self, name: str):
            return getattr(time, name)

        @staticmethod
        def sleep(wait: float) -> None:
            hot = time.monotonic() - last["message"] < hot_s
            time.sleep(min(wait, seconds) if hot or wait < 3 else wait)

    pull = node._pull_and_store_message

    def pulled(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            last["message"] = time.monotonic()
        return run_id

    node.time = _Clock()  # type: ignore[assignment]
    node._pull_and_store_message = pulled


def prompt_object_pulls(seconds: float = 0.02) -> None:
    """This process retries an object it asked for and was not there yet (a message's arrays reach
    the SuperLink, and the SuperNode, after the message itself) after `seconds`, doubling; Flower 1.42
    waits 1 s, then 2 s (`flwr.supercore.inflatable.inflatable_utils`): up to 3 s per message at
    each of the three hops (ServerApp, SuperNode, ClientApp), most of a deployed round on a fast link."""
    from flwr.supercore.inflatable import inflatable_utils as pulls

    for fn in (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree):
        assert fn.__kwdefaults__ is not None and "initial_backoff" in fn.__kwdefaults__
        fn.__kwdefaults__["initial_backoff"] = seconds



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


def unload(directory: str) -> None:
    """Forget the modules imported from `directory` (an installed FAB) and take it off `sys.path`."""
    import sys

    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(directory.rstrip("/") + "/"):
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p.rstrip("/") != directory.rstrip("/")]


class TaskStopped(BaseException):
    """Raised in a kept ClientApp process when the SuperNode stops the task it runs (federation.zygote)."""


def serve_task(argv: list[str], kept: dict) -> int:
    """One message, as `flwr-clientapp ARGV` runs it (`flwr.supernode.runtime.run_clientapp`), in a
    process that serves every message of its SuperNode: the FAB is installed and its ClientApp
    loaded once per FAB (`kept`), so the app's imports and what it keeps in memory (a hospital's
    prepared rows) stay between messages. A FAB it has not seen unloads the previous one's modules
    first. Flower's process exits after its message (`flwr_exit`); this returns its exit code (0 or 1)
    and leaves signals, the parent watch and telemetry to the caller."""
    import threading
    from pathlib import Path

    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.args import try_obtain_flwr_app_token
    from flwr.common.config import get_project_dir
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    parser = _parse_args_run_flwr_clientapp()
    parser.prog = "flwr-clientapp"
    args = parser.parse_args(argv)
    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address, insecure=args.insecure,
        root_certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(try_obtain_flwr_app_token(args))],
        retry_invoker=retry)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = reply = context = None
    status, details, code = SubStatus.FAILED, "ClientApp task failed due to unknown reason", 1
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        if kept.get("hash") != fab.hash_str:
            if "dir" in kept:   # another FAB's modules out, so that this one's are imported
                unload(kept["dir"])
            kept.clear()
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            kept.update(app=load(run.fab_id, run.fab_version, fab.hash_str), hash=fab.hash_str,
                        dir=str(Path(get_project_dir(run.fab_id, run.fab_version, fab.hash_str)).absolute()))
        reply = kept["app"](message=message, context=context)
        status, details, code = SubStatus.COMPLETED, "", 0
    except TaskStopped:
        reply, details = None, "Task stopped."
    except Exception as ex:  # noqa: BLE001 - the hospital's error goes back to the server, as Flower's does
        from logging import ERROR

        from flwr.supercore import log as flwr_log

        load_failed = isinstance(ex, LoadClientAppError)
        flwr_log(ERROR, "ClientApp raised an exception", exc_info=ex)
        details = ("An exception was raised when attempting to load `ClientApp`" if load_failed
                   else f"{type(ex)}:<'{ex}'>")
        if message is not None:
            reply = Message(Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION if load_failed
                                  else ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        if load_failed:
            kept.clear()
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:  # noqa: BLE001 - as Flower's: logged, the task fails
            code = 1
        retry.max_tries = 1
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:   # not waited for: a heartbeat retrying a SuperNode that is gone sleeps on
            threading.Thread(target=heartbeat.stop, daemon=True).start()
        client.close()
    return code
