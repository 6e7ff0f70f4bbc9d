"""Every strategy, one line each: YAML `federated.strategy.name` -> its module.

A strategy module declares `Options` (its section of the YAML; the job spec's `federated.strategy`
is the discriminated union of them all, on `name`), `DECLARED` (its hospital half included) and
`build`. Adding a strategy is its file plus one line in NAMES; the tests run every strategy listed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from strategies.base import Declared, Listener, Sampler, sample_size
from strategies.hospital import HospitalHook

NAMES = (   # one line per strategy: its module strategies/<name>.py
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "scaffold",
    "fednova",
)
MODULES = tuple(importlib.import_module(f"strategies.{name}") for name in NAMES)
STRATEGIES = {m.Options.model_fields["name"].default: m for m in MODULES}
if TYPE_CHECKING:   # to a type checker: any strategy's options (the union is built at import)
    from strategies.base import StrategyOptions
else:
    StrategyOptions = Annotated[Union[tuple(m.Options for m in MODULES)], Field(discriminator="name")]


def owners(option: str) -> list[str]:
    """The strategies that take `option` (for an error naming where a stray option belongs)."""
    return [name for name, m in STRATEGIES.items() if option in m.Options.model_fields and option != "name"]


def build_strategy(options, *, num_clients: int, fraction_fit: float, fraction_evaluate: float,
                   listener: Listener | None = None, seed: int = 0, nodes: list[int] | None = None,
                   min_fit: int = 1, accept_failures: bool = True, dp=None, evaluate_every: int = 1,
                   last_round: int = 0, trainable: list[str] | None = None):
    """`options` is the job's `federated.strategy` section; `nodes` the hospitals' node ids in
    partition order (sampling is ours, seeded: Flower is told every offered hospital takes part);
    `min_fit` the job's resolved `federated.min_fit_clients`; the hospitals evaluate every
    `evaluate_every` rounds and in `last_round`; `trainable` names the model's trainable parameters."""
    sampler = Sampler(nodes if nodes is not None else list(range(num_clients)), seed, fraction_fit,
                      fraction_evaluate, min_fit, min(min_fit, num_clients))
    common = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                  min_available_nodes=1, listener=listener, sampler=sampler, accept_failures=accept_failures,
                  evaluate_every=evaluate_every, last_round=last_round, trainable=trainable)
    if dp is not None and dp.mode == "central":
        from strategies import central_dp

        return central_dp.build(dp, num_clients=num_clients, sampled=sample_size(num_clients, fraction_fit, min_fit),
                                seed=seed, **common)
    return STRATEGIES[options.name].build(options, num_clients=num_clients, **common)


def declared(name: str) -> Declared:
    """What strategy `name` declares about itself (`strategies.base.Declared`)."""
    return STRATEGIES[name].DECLARED


def hospital_hook(name: str) -> HospitalHook:
    """Strategy `name`'s hospital half (`strategies.hospital`)."""
    return STRATEGIES[name].DECLARED.hospital
