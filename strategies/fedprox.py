"""FedProx (Li et al., 2020): FedAvg aggregation; hospitals add (mu/2)·||w - w_global||² to their loss.

Flower's FedProx sends `proximal-mu` in the train config; `clients/client_app.py` applies the term.
"""
from __future__ import annotations

from flwr.serverapp.strategy import FedProx as _FlowerFedProx

from strategies.base import ObservedStrategy


class FedProx(ObservedStrategy, _FlowerFedProx):
    pass
