"""YAML `federated.strategy.name` -> strategy object."""
from __future__ import annotations

from strategies.base import Listener
from strategies.fedavg import FedAvg

STRATEGIES = {"fedavg": FedAvg}


def build_strategy(name: str, *, num_clients: int, fraction_fit: float, fraction_evaluate: float,
                   listener: Listener | None = None, **options):
    cls = STRATEGIES[name]
    min_nodes = min(2, num_clients)
    strategy = cls(
        fraction_train=fraction_fit,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=num_clients,
        **options,
    )
    strategy.listener = listener
    return strategy
