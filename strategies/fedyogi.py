"""Adaptive federated optimisation (Reddi et al., 2021): Yogi on the server, applied to the mean update."""
from __future__ import annotations

from flwr.serverapp.strategy import FedYogi as _FlowerFedYogi

from strategies.base import ObservedStrategy


class FedYogi(ObservedStrategy, _FlowerFedYogi):
    pass
