"""adapters.flower's records and to_numpy: Flower's records as the replies carry them, made and read
cheaply, equal to Flower's own in content, views, checks, pickling and deflate/inflate."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from orchestrator.adapters.flower import Records, metric_record, to_numpy, to_torch_state


def test_a_metric_record_is_flowers_and_flower_still_checks_what_it_cannot_vouch_for():
    values = {"loss": 0.25, "num-examples": 12, "hist": [0.5, 0.25], "np": np.float64(0.5)}
    ours = metric_record(values)
    assert type(ours) is MetricRecord and ours == MetricRecord(values) and list(ours) == list(values)
    with pytest.raises(TypeError):
        metric_record({"bad": {"a": 1}})
    with pytest.raises(TypeError):
        metric_record({"flag": True})   # Flower refuses a bool; so does this
    with pytest.raises(TypeError):
        metric_record({3: 1.0})


def _records() -> Records:
    return Records({"arrays": ArrayRecord([np.arange(6.0).reshape(2, 3)]), "metrics": metric_record({"n": 3}),
                    "counts": ConfigRecord({"c": [1, 2]}), "more": metric_record({"m": 1.0})})


def test_records_views_are_flowers_and_follow_every_change():
    ours, flower = _records(), RecordDict(dict(_records()))
    for view in ("array_records", "metric_records", "config_records"):
        assert dict(getattr(ours, view)) == dict(getattr(flower, view)), view
    assert ours.metric_records is ours.metric_records   # kept until the RecordDict changes
    ours["late"] = metric_record({"x": 2.0})             # a write to the RecordDict
    assert list(ours.metric_records) == ["metrics", "more", "late"]
    ours.metric_records["via-view"] = metric_record({"y": 1})   # a write through a view reaches both
    assert "via-view" in ours and "via-view" in ours.metric_records
    del ours.config_records["counts"]
    assert "counts" not in ours and not ours.config_records
    del ours["more"]
    assert list(ours.metric_records) == ["metrics", "late", "via-view"]
    with pytest.raises(TypeError):
        ours.metric_records["wrong"] = ConfigRecord({"a": 1})   # the view's type check is Flower's


def test_records_leave_the_process_as_flowers_own():
    ours = _records()
    back = pickle.loads(pickle.dumps(ours))
    assert back == ours and dict(back.metric_records) == dict(ours.metric_records)
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(ours).items()}
    inflated = inflate_object_from_contents(ours.object_id, contents)
    assert type(inflated) is RecordDict and inflated == ours
    assert ours.object_id == RecordDict(dict(ours)).object_id


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((0, 2)), np.array(3.5), np.array([True, False]),
    np.arange(6, dtype=np.int64).reshape(2, 3).T,          # Fortran order: np.load reads it
    np.arange(4, dtype=">f8"),                              # big-endian: np.load reads it
])
def test_to_numpy_reads_flowers_arrays_as_np_load_does(array, monkeypatch):
    flower = Array(array)
    expected = flower.numpy()
    standard = array.flags.c_contiguous and array.dtype.isnative
    if standard:   # read without np.load
        monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load used"))
    got = to_numpy(flower)
    assert got.dtype == expected.dtype and got.shape == expected.shape and np.array_equal(got, expected)
    assert got.flags.writeable
    if standard:
        monkeypatch.undo()
    if array.dtype.isnative:   # torch holds native byte order only
        state = to_torch_state(ArrayRecord({"a": flower}))
        assert np.array_equal(state["a"].numpy(), expected)
