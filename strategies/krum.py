"""Krum (Blanchard et al., 2017): keep the one update closest to its n-f-2 nearest neighbours.

The selection is ours (`strategies.arithmetic.krum_select`: float64 distances, ties to the first
hospital), so a seeded run keeps its choice on any machine; Flower's float32 Gram-matrix distances
followed the BLAS kernel on near-ties. Krum keeps one hospital's model: it suits hospitals whose
data look alike (IID); on label-skewed hospitals that model is one hospital's view, not the
consortium's (use multi_krum, fedmedian or trimmed_mean there).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from strategies.base import Declared, StrategyOptions, observed

DECLARED = Declared()
CONVERGENCE_DRILL = {"partition": "iid", "options": {"f": 2}}   # what tests/ train it on (see above)


class Options(StrategyOptions):
    name: Literal["krum"] = "krum"
    f: Annotated[int, Field(ge=0, description="hospitals assumed malicious")] = 0


class KrumRounds:
    """Selection by `krum_select`; the selected replies averaged by Flower's arithmetic, in hospital order."""

    NAME = "Krum"

    def aggregate_train(self, server_round: int, replies: Iterable):
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

        from strategies.arithmetic import krum_select

        contents, _ = self._train_replies(server_round, replies)
        if not contents:
            return None, None
        flat = [np.concatenate([a.ravel() for a in c["arrays"].to_numpy_ndarrays()]) for c in contents]
        chosen = [contents[i] for i in krum_select(flat, self.num_malicious_nodes, self.num_nodes_to_select)]
        return (aggregate_arrayrecords(chosen, self.weighted_by_key),
                self.train_metrics_aggr_fn(chosen, self.weighted_by_key))


def build(options: Options, **common):
    from flwr.serverapp.strategy import Krum as _Flower

    return observed(_Flower, KrumRounds)(num_malicious_nodes=options.f, **common)
