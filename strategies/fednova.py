"""FedNova (Wang et al., 2020): normalised averaging for hospitals that take different numbers of steps.

Flower has no FedNova; this builds it on Flower's FedAvg message flow. Every hospital reports its
local step count (`protocol.LOCAL_STEPS`) and momentum (`protocol.MOMENTUM`) with its weights; the
server averages the updates divided by each hospital's step norm, then takes the effective number
of steps (`strategies.arithmetic.fednova`). With equal step counts it is FedAvg.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from orchestrator.core.protocol import LOCAL_STEPS, MOMENTUM, from_state, to_state
from strategies import arithmetic
from strategies.base import Declared, StrategyOptions, corrected_steps, observed

# every hospital always reports LOCAL_STEPS and MOMENTUM: FedNova needs no hospital hook
DECLARED = Declared(requires=lambda job: corrected_steps(job, "fednova"))


class Options(StrategyOptions):
    name: Literal["fednova"] = "fednova"


class FedNovaRounds:
    NAME = "FedNova"

    def configure_train(self, server_round: int, arrays, config, grid):
        self._x = to_state(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable):
        contents, metrics = self._train_replies(server_round, replies)
        if not contents:
            return None, None
        weights = [float(m[self.weighted_by_key]) for m in metrics]
        norms = [arithmetic.fednova_norm(int(m[LOCAL_STEPS]), float(m.get(MOMENTUM, 0.0))) for m in metrics]
        x = arithmetic.fednova(self._x, [to_state(c["arrays"]) for c in contents], norms, weights)
        return from_state(x), self.train_metrics_aggr_fn(contents, self.weighted_by_key)


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedAvg as _Flower

    return observed(_Flower, FedNovaRounds)(**common)
