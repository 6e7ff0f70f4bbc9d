"""A strategy's hospital half: what it adds to a hospital's local training and to its reply.

A strategy module's `DECLARED.hospital` is a `HospitalHook`. Both places a round's local training
runs call it, once per hospital and round, the same way: the per-hospital handler
(`clients.handlers.train`, every engine but one) and the vectorized engine
(`orchestrator.jobs.federated.vectorized`, which trains a round's hospitals as one stacked
computation and stacks what the hooks return). The hook never trains and never stores: it reads the
train message, says what to add to the local objective or gradient (`Local`), and from the weights
before and after training says what to send back and what the hospital keeps until its next round
(`Reply`); the caller keeps it (a Flower `Context.state`, a file in the state dir for resumed runs).

The default hook adds nothing; FedProx's adds a proximal term, SCAFFOLD's a gradient correction, a
control-variate delta sent back and the hospital's own control variate kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

State = dict[str, np.ndarray]


@dataclass
class Local:
    """What a strategy adds to one hospital's local training this round."""

    proximal_mu: float = 0.0            # (mu/2)·||w - w_sent||² added to every step's loss
    correction: State | None = None     # added to the named parameters' gradients at every step


@dataclass
class Reply:
    """What a strategy adds to one hospital's reply after training."""

    records: dict[str, Any] = field(default_factory=dict)    # extra records, by protocol key
    metrics: dict[str, float] = field(default_factory=dict)  # extra train metrics
    kept: State | None = None           # what the hospital keeps until its next round (None: nothing new)


class HospitalHook:
    """The hospital half of a strategy. `sent` is the model as the hospital received it and
    `trained` as it leaves local training (every entry of the state dict, as numpy arrays); `kept`
    is what this hospital's previous `Reply.kept` left, or None before its first round."""

    reads: tuple[str, ...] = ()   # the protocol keys of the train message this hook reads
    keeps: str | None = None      # the name a hospital keeps this strategy's state under (None: none)

    def active(self, content: Any) -> bool:
        """Whether this train message (its `RecordDict`) asks for the hook. False by default; a
        strategy that wraps the named one (central DP) sends none of its records."""
        return False

    def local(self, content: Any, kept: State | None, sent: State) -> Local:
        return Local()

    def reply(self, content: Any, kept: State | None, sent: State, trained: State, lr_sum: float) -> Reply:
        """`lr_sum`: the learning rates of the local steps taken, summed."""
        return Reply()


NOTHING = HospitalHook()
