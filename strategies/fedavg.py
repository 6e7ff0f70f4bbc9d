"""FedAvg (McMahan et al., 2017): the example-weighted mean of hospital models. Flower's arithmetic."""
from __future__ import annotations

from typing import Literal

from strategies.base import Declared, StrategyOptions, observed

DECLARED = Declared(plain_average=True)   # central DP and SecAgg+ wrap exactly this mean


class Options(StrategyOptions):
    name: Literal["fedavg"] = "fedavg"


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedAvg as _Flower

    return observed(_Flower)(**common)
