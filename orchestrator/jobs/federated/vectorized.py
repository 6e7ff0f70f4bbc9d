"""`federated.engine: vectorized` — a round's hospitals trained together, as one batched computation.

The inline engine's grid, except for the two messages a round is made of. The strategy's train
messages (one per sampled hospital, the same content for all) become one `core.stacked.train_stacked`
call: the global model's trainable parameters stacked once per hospital, every step a `vmap` over
the hospitals' own padded and masked batches. Evaluate messages become one forward pass of the
global model over every evaluated hospital's test rows. The replies are those the hospitals' own
handlers build (`clients.handlers.train_reply` / `evaluation_reply`), so the same Flower strategy
objects aggregate them and the same logging records them; census and attribution queries go to the
ClientApp one hospital at a time, as in the inline engine.

A hospital's SCAFFOLD control variate c_i is a row of one stacked array per parameter (and, with a
state dir, a file per hospital as the ClientApp writes it, so a run resumes in either engine).
What this engine cannot run it declares in `spec.engines.ENGINES`, and the job is refused when validated.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Message

from clients import controls, handlers
from clients.updates import scaffold_client_control
from orchestrator.core import protocol as P
from orchestrator.core.arrays import to_torch_state
from orchestrator.core.models import standardizer
from orchestrator.core.stacked import Block, scored_stacked, train_stacked
from orchestrator.jobs.federated.inline import InlineGrid, crashed, unavailable


class VectorizedGrid(InlineGrid):
    # the census and attribution queries the ClientApp answers one by one read their message and
    # build a new reply: no copies (a census of 100 000 hospitals spent a third of its time on them)
    copies = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controls: dict[str, np.ndarray] = {}   # SCAFFOLD: name -> (hospitals, *shape)
        self.has_control: np.ndarray | None = None   # which rows hold a hospital's c_i
        self._model: torch.nn.Module | None = None   # the global model, built once, reloaded per message

    def _global_model(self, h: handlers.Hospital, msg: Message) -> torch.nn.Module:
        """The message's global model: one module for the run, its weights and buffers loaded from
        each message (neither the batched training nor the evaluation writes to it)."""
        if self._model is None:
            self._model = handlers._model(h, msg)
        else:
            self._model.load_state_dict(to_torch_state(msg.content[P.ARRAYS]))
        return self._model

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        groups: dict[tuple, list[Message]] = {}
        ids = []
        for msg in messages:
            self._stamp(msg)
            kind = msg.metadata.message_type.split(".")[0]
            if kind in ("train", "evaluate") and P.CONFIG in msg.content and P.ARRAYS in msg.content:
                groups.setdefault((kind, id(msg.content)), []).append(msg)
            else:
                self._replies[msg.metadata.message_id] = self._deliver(msg)
            ids.append(msg.metadata.message_id)
        for (kind, _), group in groups.items():
            self._replies.update(self._train(group) if kind == "train" else self._evaluate(group))
        return ids

    def _hospitals(self, group: list[Message], replies: dict) -> list[tuple[Message, object, handlers.Hospital]]:
        """The group's hospitals that can take part; the others get the error reply they would send."""
        ready = []
        for msg in group:
            context = self.contexts.get(msg.metadata.dst_node_id)
            if context is None:
                replies[msg.metadata.message_id] = unavailable(msg)
                continue
            try:
                h = handlers._hospital(msg, context)
                if msg.metadata.message_type.startswith("train"):
                    handlers.check_fault(h, int(msg.content[P.CONFIG][P.SERVER_ROUND]))
            except Exception as exc:
                replies[msg.metadata.message_id] = crashed(msg, exc)
                continue
            ready.append((msg, context, h))
        return ready

    def _train(self, group: list[Message]) -> dict[str, Message]:
        replies: dict[str, Message] = {}
        ready = self._hospitals(group, replies)
        if not ready:
            return replies
        try:
            replies.update(self._train_together(ready))
        except Exception as exc:  # the batched step failed: every hospital in it fails the round
            replies.update({m.metadata.message_id: crashed(m, exc) for m, _, _ in ready})
        return replies

    def _train_together(self, ready: list) -> dict[str, Message]:
        first, _, h0 = ready[0]
        content, job = first.content, h0.job
        server_round = int(content[P.CONFIG][P.SERVER_ROUND])
        model = self._global_model(h0, first)
        mean = standardizer(model).mean.numpy()
        block = Block.of([h.tensors(mean)[:2] for _, _, h in ready])
        plans = [handlers.local_plan(h, server_round) for _, _, h in ready]
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        scaffold = P.CONTROL in content
        c = c_i = correction = None
        if scaffold:
            c = P.to_state(content[P.CONTROL])
            c_i = self._load_controls(ready, server_round, c)
            correction = {n: torch.from_numpy(c[n][None] - c_i[n]) for n in c}
        result = train_stacked(model, block, job.train, job.train.epochs, [seed for seed, _ in plans],
                               handlers._objective(h0, model, first), **plans[0][1],
                               proximal_mu=float(content[P.CONFIG].get(P.PROXIMAL_MU, 0.0)), correction=correction)
        replies = {}
        x = {n: start[n].numpy() for n in c} if scaffold else {}   # the global model's, for every c_i+
        for k, (msg, context, h) in enumerate(ready):
            state = {n: result.params[n][k] if n in result.params else v for n, v in start.items()}
            extra = {}
            if scaffold:
                mine = {n: c_i[n][k] for n in c}
                y = {n: result.params[n][k].numpy() for n in c}
                c_new = scaffold_client_control(mine, c, x, y, result.lr_sums[k])
                self._save_control(msg, context, h, server_round, c_new)
                extra[P.CONTROL_DELTA] = P.from_state({n: c_new[n] - mine[n] for n in c})
            replies[msg.metadata.message_id] = handlers.train_reply(h, msg, start, state, result.losses[k],
                                                                    result.steps[k], {}, extra)
        return replies

    def _load_controls(self, ready: list, server_round: int, c: dict) -> dict[str, np.ndarray]:
        """Each hospital's c_i as rows (K, *shape): from this grid's rows, else a file a previous run
        left in the state dir (resume), else zeros."""
        if self.has_control is None:
            self.has_control = np.zeros(len(self.contexts), dtype=bool)
            self.controls = {n: np.zeros((len(self.contexts), *v.shape), dtype=v.dtype) for n, v in c.items()}
        rows = np.array([h.partition_id for _, _, h in ready])
        for msg, context, h in ready:
            if not self.has_control[h.partition_id]:
                saved = controls.load(h.partition_id, context, msg, server_round)
                if saved is not None:
                    for n in c:
                        self.controls[n][h.partition_id] = saved[n]
                self.has_control[h.partition_id] = True
        return {n: self.controls[n][rows] for n in c}

    def _save_control(self, msg: Message, context, h, server_round: int, c_new: dict) -> None:
        for n, v in c_new.items():
            self.controls[n][h.partition_id] = v
        controls.save(h.partition_id, context, msg, server_round, c_new, in_context=False)

    def _evaluate(self, group: list[Message]) -> dict[str, Message]:
        replies: dict[str, Message] = {}
        ready = self._hospitals(group, replies)
        if not ready:
            return replies
        first, _, h0 = ready[0]
        try:
            model = self._global_model(h0, first)
            mean = standardizer(model).mean.numpy()
            tests = [h.tensors(mean)[2:] for _, _, h in ready]
            objective = handlers._objective(h0, model, first)
            model.eval()
            with torch.no_grad():  # one forward pass over every evaluated hospital's test rows
                out = model(torch.cat([x for x, _ in tests])) if sum(len(y) for _, y in tests) else None
            scores = scored_stacked(out, torch.cat([y for _, y in tests]), [len(y) for _, y in tests], objective)
            at = 0
            for (msg, _, h), (_, y), score in zip(ready, tests, scores):
                mine = out[at:at + len(y)] if out is not None else None
                at += len(y)
                replies[msg.metadata.message_id] = handlers.evaluation_reply(h, msg, objective, mine, y, scores=score)
        except Exception as exc:
            replies.update({m.metadata.message_id: crashed(m, exc) for m, _, _ in ready})
        return replies

