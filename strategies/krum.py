"""Krum (Blanchard et al., 2017): keep the update closest to its n-f-2 nearest neighbours."""
from __future__ import annotations

from flwr.serverapp.strategy import Krum as _FlowerKrum

from strategies.base import ObservedStrategy


class Krum(ObservedStrategy, _FlowerKrum):
    pass
