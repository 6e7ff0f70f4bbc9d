"""Coordinate-wise trimmed mean (Yin et al., 2018): drop the beta fraction at each end, average the rest."""
from __future__ import annotations

from flwr.serverapp.strategy import FedTrimmedAvg as _FlowerFedTrimmedAvg

from strategies.base import ObservedStrategy


class FedTrimmedAvg(ObservedStrategy, _FlowerFedTrimmedAvg):
    pass
