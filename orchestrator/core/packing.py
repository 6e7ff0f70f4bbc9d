"""One array per record on the deployment engine's wire: a message's arrays packed for the crossing.

Flower sends every `Array` of a message as objects of its own (the array and its chunk), and every
object crosses each hop (ServerApp -> SuperLink -> SuperNode -> ClientApp, and back) as its own
request, over TLS and signed by the node where nodes authenticate: for the heart MLP's model, 16
objects a message, most of the SuperLink's work in a deployed round (bench/deployment.py). Here the
ServerApp's grid (`jobs.federated.deployed.Prompt`) packs each ArrayRecord of more than one array into
one array before it pushes a message, and the hospital (`clients.client_app`) unpacks it on arrival
and packs its reply the same way; the ServerApp unpacks replies as it pulls them. Every array's
bytes, dtype, shape and kind travel untouched: what the strategies and the hospitals' handlers see,
and the bytes they count, are the simulation's. Flower's SecAgg+ messages are left as they are.
"""
from __future__ import annotations

import json

from flwr.app import Array, ArrayRecord, Message, RecordDict

PACKED, STYPE = "consortium.packed", "consortium.packed/1"
_LEGACY = ("fitins", "evaluateins", "secaggplus", "fitres", "evaluateres")   # Flower's SecAgg+ workflow


def pack(record: ArrayRecord) -> ArrayRecord:
    """The record's arrays as one: a header (name, dtype, shape, kind, size of each) and their bytes."""
    arrays = list(record.items())
    header = json.dumps([[name, a.dtype, list(a.shape), a.stype, len(a.data)] for name, a in arrays]).encode()
    blob = len(header).to_bytes(4, "big") + header + b"".join(bytes(a.data) for _, a in arrays)
    return ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(blob),), stype=STYPE, data=blob)})


def is_packed(record) -> bool:
    return isinstance(record, ArrayRecord) and len(record) == 1 and PACKED in record and \
        record[PACKED].stype == STYPE


def unpack(record: ArrayRecord) -> ArrayRecord:
    blob = bytes(record[PACKED].data)
    size = int.from_bytes(blob[:4], "big")
    at = 4 + size
    out: dict[str, Array] = {}
    for name, dtype, shape, stype, n in json.loads(blob[4:at]):
        out[name] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=blob[at:at + n])
        at += n
    return ArrayRecord(out)


def _packable(message: Message) -> bool:
    return message.has_content() and not any(k.startswith(_LEGACY) for k in message.content.keys())


def pack_message(message: Message, memo: dict | None = None) -> bool:
    """Pack the message's ArrayRecords of more than one array, in place; True if any was. `memo`
    packs a record the messages of one push share once."""
    if not _packable(message):
        return False
    memo = {} if memo is None else memo
    content = message.content
    changed = {}
    for key, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) > 1:
            if id(record) not in memo:
                memo[id(record)] = (record, pack(record))   # the record kept alive while its id is the key
            changed[key] = memo[id(record)][1]
    if not changed:
        return False
    message.content = RecordDict({key: changed.get(key, record) for key, record in content.items()})
    return True


def unpack_message(message: Message) -> bool:
    """Unpack the message's packed records, in place; True if any was packed."""
    if not message.has_content():
        return False
    content = message.content
    if not any(is_packed(record) for record in content.values()):
        return False
    message.content = RecordDict({key: unpack(record) if isinstance(record, ArrayRecord) and is_packed(record)
                                  else record for key, record in content.items()})
    return True
