"""SCAFFOLD (Karimireddy et al., 2020): control variates correct each hospital's drift under label skew.

Flower has no SCAFFOLD; this builds it on Flower's FedAvg message flow. Every train message carries
the server's control variate `c` (record `protocol.CONTROL`); a hospital keeps its own `c_i` across
rounds (`Hospital.keeps`), trains with gradients corrected by c - c_i and replies with its weights
and `c_i+ - c_i` (record `protocol.CONTROL_DELTA`). The arithmetic is `strategies.arithmetic`.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from orchestrator.core.protocol import CONTROL, CONTROL_DELTA, from_state, to_state
from strategies import arithmetic
from strategies.base import Declared, ObservedStrategy, StrategyOptions, corrected_steps, observed
from strategies.hospital import HospitalHook, Local, Reply


class Hospital(HospitalHook):
    """Local SGD with gradients corrected by c - c_i; the reply carries c_i+ - c_i, and c_i+ is kept."""

    reads = (CONTROL,)
    keeps = "scaffold.c_i"

    def active(self, content) -> bool:
        return CONTROL in content

    def _c(self, content, kept):
        c = to_state(content[CONTROL])
        return c, (kept or {k: np.zeros_like(v) for k, v in c.items()})

    def local(self, content, kept, sent) -> Local:
        c, c_i = self._c(content, kept)
        return Local(correction={k: c[k] - c_i[k] for k in c})

    def reply(self, content, kept, sent, trained, lr_sum) -> Reply:
        c, c_i = self._c(content, kept)
        c_new = arithmetic.scaffold_client_control(c_i, c, {k: sent[k] for k in c}, {k: trained[k] for k in c},
                                                   lr_sum)
        return Reply(records={CONTROL_DELTA: from_state({k: c_new[k] - c_i[k] for k in c})}, kept=c_new)


def _requires(job) -> list[str]:
    problems = corrected_steps(job, "scaffold")
    if job.federated.dp is not None and job.federated.dp.mode == "local":
        problems.append("federated.dp: local DP-SGD does not combine with scaffold's corrected gradients")
    return problems


DECLARED = Declared(requires=_requires, hospital=Hospital())


class Options(StrategyOptions):
    name: Literal["scaffold"] = "scaffold"
    server_lr: Annotated[float, Field(gt=0.0, description="the server's step (eta_g)")] = 1.0


class ScaffoldRounds(ObservedStrategy):
    NAME = "Scaffold"
    STATE_ATTRS = ("control",)

    def __init__(self, *, server_lr: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.server_lr = server_lr
        self.control: dict[str, np.ndarray] | None = None   # c, over the trainable parameters
        self._x: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round: int, arrays, config, grid):
        self._x = to_state(arrays)
        if self.control is None:
            names = self.trainable or [k for k, v in self._x.items() if np.issubdtype(v.dtype, np.floating)]
            self.control = {k: np.zeros_like(self._x[k], dtype=np.float32) for k in names}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = from_state(self.control)
        for m in messages:
            m.content[CONTROL] = control
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable):
        contents, metrics = self._train_replies(server_round, replies)
        if not contents:
            return None, None
        weights = [float(m[self.weighted_by_key]) for m in metrics]
        ys = [to_state(c["arrays"]) for c in contents]
        deltas = [to_state(c[CONTROL_DELTA]) for c in contents]
        x, self.control = arithmetic.scaffold_server(self._x, ys, deltas, self.control, weights,
                                                     self.server_lr, self.num_clients)
        return from_state(x), self.train_metrics_aggr_fn(contents, self.weighted_by_key)


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedAvg as _Flower

    return observed(_Flower, ScaffoldRounds)(server_lr=options.server_lr, **common)
