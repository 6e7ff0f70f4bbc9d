"""FedProx (Li et al., 2020): FedAvg aggregation; hospitals add (mu/2)·||w - w_global||² to their loss.

Flower's FedProx sends mu in the train config under `protocol.PROXIMAL_MU`; the hospital hook below
reads it from there and hands the term to the local loop.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from orchestrator.core.protocol import CONFIG, PROXIMAL_MU
from strategies.base import Declared, StrategyOptions, observed
from strategies.hospital import HospitalHook, Local


class Hospital(HospitalHook):
    reads = (PROXIMAL_MU,)

    def active(self, content) -> bool:
        return PROXIMAL_MU in content[CONFIG]

    def local(self, content, kept, sent) -> Local:
        return Local(proximal_mu=float(content[CONFIG][PROXIMAL_MU]))


def _requires(job) -> list[str]:
    fed, problems = job.federated, []
    if fed.dp is not None and fed.dp.mode == "local":
        problems.append("federated.dp: local DP-SGD trains without fedprox's proximal term; use fedavg with "
                        "local DP, or drop federated.dp")
    if fed.personalize is not None and fed.personalize.method == "fedrep":
        problems.append("federated.personalize.method: fedrep trains its own loop without fedprox's proximal "
                        "term; use fedper, or strategy fedavg")
    return problems


DECLARED = Declared(requires=_requires, hospital=Hospital())


class Options(StrategyOptions):
    name: Literal["fedprox"] = "fedprox"
    mu: Annotated[float, Field(ge=0.0, description="weight of the proximal term")] = 0.01


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedProx as _Flower

    return observed(_Flower)(proximal_mu=options.mu, **common)
