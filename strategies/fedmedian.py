"""Coordinate-wise median of hospital models (Yin et al., 2018): robust to a minority of bad updates."""
from __future__ import annotations

from typing import Literal

from strategies.base import Declared, StrategyOptions, observed

DECLARED = Declared()


class Options(StrategyOptions):
    name: Literal["fedmedian"] = "fedmedian"


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedMedian as _Flower

    return observed(_Flower)(**common)
