"""FedAvg (McMahan et al., 2017): the example-weighted mean of hospital models. Flower's arithmetic."""
from __future__ import annotations

from flwr.serverapp.strategy import FedAvg as _FlowerFedAvg

from strategies.base import ObservedStrategy


class FedAvg(ObservedStrategy, _FlowerFedAvg):
    pass
