"""FedProx (Li et al., 2020): FedAvg aggregation; hospitals add (mu/2)·||w - w_global||² to their loss.

Flower's FedProx sends mu in the train config under `protocol.PROXIMAL_MU`; the hospital
(`clients.client_app`) reads it from there and applies the term.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from orchestrator.core.protocol import PROXIMAL_MU
from strategies.base import Declared, StrategyOptions, observed

CLIENT_READS: tuple[str, ...] = (PROXIMAL_MU,)
DECLARED = Declared()


class Options(StrategyOptions):
    name: Literal["fedprox"] = "fedprox"
    mu: Annotated[float, Field(ge=0.0, description="weight of the proximal term")] = 0.01


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedProx as _Flower

    return observed(_Flower)(proximal_mu=options.mu, **common)
