"""Coordinate-wise trimmed mean (Yin et al., 2018): drop the beta fraction at each end, average the rest."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from strategies.base import Declared, StrategyOptions, observed

DECLARED = Declared()


class Options(StrategyOptions):
    name: Literal["trimmed_mean"] = "trimmed_mean"
    beta: Annotated[float, Field(gt=0.0, lt=0.5, description="fraction cut at each end, per coordinate")] = 0.2


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedTrimmedAvg as _Flower

    return observed(_Flower)(beta=options.beta, **common)
