"""FedNova (Wang et al., 2020): normalised averaging for hospitals that take different numbers of steps.

Flower has no FedNova; this builds it on Flower's FedAvg message flow. Every hospital reports its
local step count (`local-steps`) and momentum with its weights; the server averages the updates
divided by each hospital's step norm, then takes the effective number of steps
(`strategies.arithmetic.fednova`). With equal step counts it is FedAvg.
"""
from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg as _FlowerFedAvg

from strategies import arithmetic
from orchestrator.records import from_state, to_state
from strategies.base import ObservedStrategy


class FedNova(ObservedStrategy, _FlowerFedAvg):
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        self._x = to_state(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents, metrics = self._train_replies(server_round, replies)
        if not contents:
            return None, None
        weights = [float(m[self.weighted_by_key]) for m in metrics]
        norms = [arithmetic.fednova_norm(int(m["local-steps"]), float(m.get("momentum", 0.0))) for m in metrics]
        x = arithmetic.fednova(self._x, [to_state(c["arrays"]) for c in contents], norms, weights)
        return from_state(x), self.train_metrics_aggr_fn(contents, self.weighted_by_key)
