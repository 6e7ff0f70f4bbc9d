"""Adaptive federated optimisation (Reddi et al., 2021): Adam on the server, applied to the mean update."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from strategies.base import Declared, StrategyOptions, observed

DECLARED = Declared()


class Options(StrategyOptions):
    name: Literal["fedadam"] = "fedadam"
    server_lr: Annotated[float, Field(gt=0.0, description="the server optimizer's step (eta)")] = 0.1
    tau: Annotated[float, Field(gt=0.0, description="adaptivity (epsilon) of the server optimizer")] = 1e-3
    beta1: Annotated[float, Field(ge=0.0, lt=1.0, description="first-moment decay")] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0, description="second-moment decay")] = 0.99


class FedAdamRounds:
    STATE_ATTRS = ("m_t", "v_t")  # the server optimizer's moments, kept in round checkpoints
    NAME = "FedAdam"


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedAdam as _Flower

    return observed(_Flower, FedAdamRounds)(eta=options.server_lr, tau=options.tau, beta_1=options.beta1,
                                      beta_2=options.beta2, **common)
