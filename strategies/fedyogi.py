"""Adaptive federated optimisation (Reddi et al., 2021): Yogi on the server, applied to the mean update."""
from __future__ import annotations

from flwr.serverapp.strategy import FedYogi as _FlowerFedYogi

from strategies.base import ObservedStrategy


class FedYogi(ObservedStrategy, _FlowerFedYogi):
    STATE_ATTRS = ("m_t", "v_t")  # the server optimizer's moments, kept in round checkpoints
