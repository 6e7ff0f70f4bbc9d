"""Adaptive federated optimisation (Reddi et al., 2021): Adagrad on the server, applied to the mean update."""
from __future__ import annotations

from flwr.serverapp.strategy import FedAdagrad as _FlowerFedAdagrad

from strategies.base import ObservedStrategy


class FedAdagrad(ObservedStrategy, _FlowerFedAdagrad):
    STATE_ATTRS = ("m_t", "v_t")  # the server optimizer's moments, kept in round checkpoints
