"""`federated.engine: inline` — the hospitals' ClientApp called in this process, no Ray.

Flower's simulation engine runs every hospital in a Ray actor; its start-up (~20 s) dominates a small
study. The inline engine is a `Grid` that delivers each message to the same `ClientApp` (mods
included) one hospital after another, with one persistent `Context` per hospital, so strategies,
client code and records are exactly those of the simulation. Each hospital gets its own copy of
every message and the server gets a copy of every reply: nothing is shared by reference.

What it gives up: hospitals train one after another (no parallelism), a hospital cannot time out,
and nothing isolates a hospital's process. `engine: auto` (the default) picks it, or the
vectorized engine built on it, when one machine's cores serve the job (`spec.engines.choose_engine`).
"""
from __future__ import annotations

import copy
import traceback
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from orchestrator.adapters.flower import copy_metadata, stamp

SERVER_NODE_ID = 1


class InlineGrid(Grid):
    copies = True   # each hospital its own copy of a message, the server its own of each reply

    def __init__(self, client_app: ClientApp, node_configs: list[dict], run_id: int = 1):
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        # node ids that look like the simulation's (not 0..n-1, so nothing relies on them being indices)
        self.contexts = {
            1000 + 7 * i: Context(run_id=run_id, node_id=1000 + 7 * i, node_config=dict(cfg), state=RecordDict(),
                                  run_config={})
            for i, cfg in enumerate(node_configs)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            self._stamp(msg)
            self._replies[msg.metadata.message_id] = self._deliver(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def _stamp(self, msg: Message) -> None:
        stamp(msg, self._run.run_id, SERVER_NODE_ID)

    def _deliver(self, msg: Message) -> Message:
        context = self.contexts.get(msg.metadata.dst_node_id)
        if context is None:
            return unavailable(msg)
        copied = copy.deepcopy if self.copies else (lambda record: record)
        own = Message(copied(msg.content), msg.metadata.dst_node_id, msg.metadata.message_type,
                      group_id=msg.metadata.group_id)
        copy_metadata(own, msg)
        try:
            reply = self.client_app(own, context)
        except Exception as exc:  # the hospital crashed: the server sees an error reply, as in simulation
            return crashed(msg, exc)
        return Message(copied(reply.content), reply_to=msg) if reply.has_content() else \
            Message(reply.error, reply_to=msg)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def unavailable(msg: Message) -> Message:
    """The error reply to a message for a node this grid does not have."""
    return Message(Error(ErrorCode.NODE_UNAVAILABLE, f"no node {msg.metadata.dst_node_id}"), reply_to=msg)


def crashed(msg: Message, exc: Exception) -> Message:
    """The error reply a hospital that raised `exc` on `msg` sends, as in Flower's simulation."""
    reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
