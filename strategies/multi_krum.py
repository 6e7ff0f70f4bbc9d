"""Multi-Krum (Blanchard et al., 2017): average the `select` updates that Krum scores best."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from strategies.base import Declared, StrategyOptions, observed
from strategies.krum import KrumRounds

DECLARED = Declared()
CONVERGENCE_DRILL = {"options": {"f": 2, "select": 5}}


class Options(StrategyOptions):
    name: Literal["multi_krum"] = "multi_krum"
    f: Annotated[int, Field(ge=0, description="hospitals assumed malicious")] = 0
    select: Annotated[int, Field(ge=1, description="updates averaged")] = 1


class MultiKrumRounds(KrumRounds):
    NAME = "MultiKrum"


def build(options: Options, **common):
    from flwr.serverapp.strategy import MultiKrum as _Flower

    return observed(_Flower, MultiKrumRounds)(num_malicious_nodes=options.f, num_nodes_to_select=options.select,
                                              **common)
