"""Adaptive federated optimisation (Reddi et al., 2021): Adam on the server, applied to the mean update."""
from __future__ import annotations

from flwr.serverapp.strategy import FedAdam as _FlowerFedAdam

from strategies.base import ObservedStrategy


class FedAdam(ObservedStrategy, _FlowerFedAdam):
    STATE_ATTRS = ("m_t", "v_t")  # the server optimizer's moments, kept in round checkpoints
