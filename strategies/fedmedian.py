"""Coordinate-wise median of hospital models (Yin et al., 2018): robust to a minority of bad updates."""
from __future__ import annotations

from flwr.serverapp.strategy import FedMedian as _FlowerFedMedian

from strategies.base import ObservedStrategy


class FedMedian(ObservedStrategy, _FlowerFedMedian):
    pass
