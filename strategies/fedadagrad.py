"""Adaptive federated optimisation (Reddi et al., 2021): Adagrad on the server, applied to the mean update."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from strategies.base import Declared, StrategyOptions, observed

DECLARED = Declared()


class Options(StrategyOptions):
    name: Literal["fedadagrad"] = "fedadagrad"
    server_lr: Annotated[float, Field(gt=0.0, description="the server optimizer's step (eta)")] = 0.1
    tau: Annotated[float, Field(gt=0.0, description="adaptivity (epsilon) of the server optimizer")] = 1e-3


class FedAdagradRounds:
    STATE_ATTRS = ("m_t", "v_t")  # the server optimizer's moments, kept in round checkpoints
    NAME = "FedAdagrad"


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedAdagrad as _Flower

    return observed(_Flower, FedAdagradRounds)(eta=options.server_lr, tau=options.tau, **common)
