"""A toy strategy, whole in one file as every strategy is: FedAvg on the server, and at each hospital
a memory of its own last update that pulls its next local steps along (`beta`, sent in the train
config). It exercises all three hospital hooks: a local gradient term, an extra train metric sent
back (`train_toy_update_norm`, logged as train/toy_update_norm), and state kept at the hospital
between rounds. Not a method to use: `tests/integration/test_strategy_plugin.py` copies it into a
copy of strategies/ and adds the one registry line, then runs it in the inline and vectorized engines."""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from orchestrator.core.protocol import CONFIG
from strategies.base import Declared, ObservedStrategy, StrategyOptions, observed
from strategies.hospital import HospitalHook, Local, Reply

BETA = "toy-beta"


class Hospital(HospitalHook):
    reads = (BETA,)
    keeps = "toy.last_update"

    def active(self, content) -> bool:
        return BETA in content[CONFIG]

    def local(self, content, kept, sent) -> Local:
        if kept is None:   # no update of its own yet: plain SGD
            return Local()
        beta = float(content[CONFIG][BETA])
        return Local(correction={k: (-beta * v).astype(np.float32) for k, v in kept.items()})

    def reply(self, content, kept, sent, trained, lr_sum) -> Reply:
        update = {k: trained[k] - sent[k] for k in sent if np.issubdtype(sent[k].dtype, np.floating)}
        norm = float(np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update.values())))
        return Reply(metrics={"train_toy_update_norm": norm}, kept=update)


DECLARED = Declared(hospital=Hospital())


class Options(StrategyOptions):
    name: Literal["toy"] = "toy"
    beta: Annotated[float, Field(ge=0.0, description="how hard a hospital's last update pulls")] = 0.5


class Rounds(ObservedStrategy):
    NAME = "Toy"

    def __init__(self, *, beta: float, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def configure_train(self, server_round: int, arrays, config, grid):
        config[BETA] = self.beta
        return super().configure_train(server_round, arrays, config, grid)


def build(options: Options, **common):
    from flwr.serverapp.strategy import FedAvg as _Flower

    return observed(_Flower, Rounds)(beta=options.beta, **common)
