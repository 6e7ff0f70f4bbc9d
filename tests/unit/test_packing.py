"""A message's arrays packed as one for the deployment engine's wire (orchestrator.core.packing):
every array comes back with its bytes, dtype, shape and kind; fewer objects cross; SecAgg+'s
records and single arrays are left alone."""
from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from orchestrator.adapters.flower import server_identity
from orchestrator.core.packing import PACKED, is_packed, pack, pack_message, unpack, unpack_message


def _record() -> ArrayRecord:
    model = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    arrays = ArrayRecord(model.state_dict())
    arrays["steps"] = Array(np.array([3, 1, 4], dtype=np.int64))
    arrays["scalar"] = Array(np.array(2.5))   # 0-d
    return arrays


def test_packing_keeps_every_array_exactly():
    record = _record()
    packed = pack(record)
    assert is_packed(packed) and list(packed.keys()) == [PACKED] and not is_packed(record)
    back = unpack(packed)
    assert list(back.keys()) == list(record.keys())
    for name, a in record.items():
        b = back[name]
        assert (b.dtype, b.shape, b.stype, bytes(b.data)) == (a.dtype, a.shape, a.stype, bytes(a.data))
        np.testing.assert_array_equal(b.numpy(), a.numpy())


def _message(content: RecordDict) -> Message:
    with server_identity(run_id=1, node_id=0):   # as the ServerApp makes them
        return Message(content=content, dst_node_id=7, message_type="train")


def test_a_message_crosses_with_fewer_objects_and_arrives_as_sent():
    record = _record()
    sent = _message(RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 3})}))
    before = len(get_all_nested_objects(sent.content))
    assert pack_message(sent)
    assert is_packed(sent.content["arrays"]) and sent.content["config"]["server-round"] == 3
    assert len(get_all_nested_objects(sent.content)) < before / 2
    assert unpack_message(sent) and not unpack_message(sent)
    assert sent.content["arrays"].object_id == record.object_id   # the same arrays, to the byte


def test_one_push_packs_a_record_its_messages_share_once():
    record, memo = _record(), {}
    a, b = (_message(RecordDict({"arrays": record})) for _ in range(2))
    assert pack_message(a, memo) and pack_message(b, memo)
    assert a.content["arrays"] is b.content["arrays"]


def test_secagg_records_and_single_arrays_are_left_as_they_are():
    secagg = _message(RecordDict({"fitins.parameters": _record()}))
    assert not pack_message(secagg) and not is_packed(secagg.content["fitins.parameters"])
    single = _message(RecordDict({"arrays": ArrayRecord({"update": Array(np.zeros(5, dtype=np.float32))})}))
    assert not pack_message(single) and not unpack_message(single)
