"""Flower's `RecordDict` and `MetricRecord`, as the hospitals' replies carry them, made cheaply.

A round's replies are read many times over by Flower's strategies: every access to
`RecordDict.metric_records` (or `array_records`, `config_records`) builds a new view and writes each
record back into the RecordDict through its type checks, and `aggregate_metricrecords` and
`aggregate_arrayrecords` ask once per reply, the reply consistency check once more, our round report
again (1000 hospitals x 5%: ~700 views a round). `Records` is Flower's `RecordDict` whose views
hold the same records and mirror writes the same way, built without re-checking records it
already checked, and kept until the RecordDict changes. `metric_record` fills a `MetricRecord` with the plain
`int`/`float` values a reply holds without Flower's per-item `TypedDict` checks; anything else
(lists, numpy scalars, a wrong type) goes through them as before.

`Records` carries Flower's qualified name: a message that leaves the process is deflated under
that name and inflated as Flower's own `RecordDict`; pickle finds this module's class.
"""
from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.app import RecordDict as FlowerRecordDict
from flwr.app.message.recorddict import _SyncedDict


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
            view = _SyncedDict[kind](self, kind)
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
