"""`federated.engine: vectorized` — a round's hospitals trained together, as one batched computation.

The inline engine's grid, except for the two messages a round is made of. The strategy's train
messages (one per sampled hospital, the same content for all) become one `core.stacked.train_stacked`
call: the global model's trainable parameters stacked once per hospital, every step a `vmap` over
the hospitals' own padded and masked batches. Evaluate messages become one forward pass of the
global model over every evaluated hospital's test rows. The replies are those the hospitals' own
handlers build (`clients.handlers.train_reply` / `evaluation_reply`), so the same Flower strategy
objects aggregate them and the same logging records them; census and attribution queries go to the
ClientApp one hospital at a time, as in the inline engine.

The job's strategy's hospital half (`strategies.hospital`) is called once per hospital, as the
ClientApp calls it, and its gradient corrections are stacked; what a hospital keeps between rounds
lives in this grid (and, with a state dir, in a file per hospital as the ClientApp writes it, so a
run resumes in either engine).
What this engine cannot run it declares in `spec.engines.ENGINES`, and the job is refused when validated.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Message

from clients import handlers, kept
from orchestrator.core import protocol as P
from orchestrator.adapters.flower import to_torch_state
from orchestrator.core.models import standardizer
from orchestrator.core.stacked import Block, scored_stacked, train_stacked
from orchestrator.jobs.federated.inline import InlineGrid, crashed, unavailable
from strategies.registry import hospital_hook


class VectorizedGrid(InlineGrid):
    # the census and attribution queries the ClientApp answers one by one read their message and
    # build a new reply: no copies (bench/README.md, "figures behind the code")
    copies = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept: dict[int, dict[str, np.ndarray]] = {}   # what each hospital keeps for its strategy
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
        hook = hospital_hook(job.federated.strategy.name)
        hooked = hook.active(content)
        sent = {n: v.numpy() for n, v in start.items()}   # the same for every hospital of the round
        before = [self._kept(hook.keeps, msg, context, h, server_round) for msg, context, h in ready] if hooked else []
        locals_ = [hook.local(content, b, sent) for b in before]
        mu = {local.proximal_mu for local in locals_} or {0.0}
        if len(mu) > 1:
            raise ValueError(f"the vectorized engine takes one proximal mu per round; the hospitals' hooks gave {mu}")
        corrections = [local.correction for local in locals_]
        correction = None
        if corrections and corrections[0] is not None:
            correction = {n: torch.from_numpy(np.stack([c[n] for c in corrections])) for n in corrections[0]}
        result = train_stacked(model, block, job.train, job.train.epochs, [seed for seed, _ in plans],
                               handlers._objective(h0, model, first), **plans[0][1],
                               proximal_mu=mu.pop(), correction=correction)
        replies = {}
        for k, (msg, context, h) in enumerate(ready):
            state = {n: result.params[n][k] if n in result.params else v for n, v in start.items()}
            extra: dict = {}
            metrics: dict = {}
            if hooked:
                reply = hook.reply(content, before[k], sent, {n: v.detach().numpy() for n, v in state.items()},
                                   result.lr_sums[k])
                extra.update(reply.records)
                metrics.update(reply.metrics)
                if hook.keeps and reply.kept is not None:
                    self.kept[h.partition_id] = reply.kept
                    kept.save(hook.keeps, h.partition_id, context, msg, server_round, reply.kept, in_context=False)
            replies[msg.metadata.message_id] = handlers.train_reply(h, msg, start, state, result.losses[k],
                                                                    result.steps[k], metrics, extra, context)
        return replies

    def _kept(self, key: str | None, msg: Message, context, h, server_round: int) -> dict | None:
        """What hospital `h` keeps for its strategy: from this grid, else a file a previous run left
        in the state dir (resume), else nothing yet."""
        if key is None:
            return None
        if h.partition_id not in self.kept:
            saved = kept.load(key, h.partition_id, context, msg, server_round)
            if saved is None:
                return None
            self.kept[h.partition_id] = saved
        return self.kept[h.partition_id]

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

