"""Multi-Krum (Blanchard et al., 2017): average the `select` updates that Krum scores best."""
from __future__ import annotations

from flwr.serverapp.strategy import MultiKrum as _FlowerMultiKrum

from strategies.base import ObservedStrategy


class MultiKrum(ObservedStrategy, _FlowerMultiKrum):
    pass
