"""What every Consortium strategy adds to Flower's: seeded sampling, a fixed aggregation order,
per-hospital reports, a round offset for resumed runs and a checkpointable state.

Flower samples hospitals with the global `random` module and sums updates in arrival order, both of
which vary run to run; a `Sampler` seeded by (seed, round) and replies sorted by hospital make a
seeded run reproduce its metrics exactly. The listener is how the orchestrator hears about each
round (a strategy itself never touches the file system or MLflow).

A strategy module declares `Options` (its YAML section, on `StrategyOptions`), `DECLARED` (what it
tells the rest of the job, its hospital half included: `Declared`, `strategies.hospital`) and
`build(options, **common)`, which imports Flower's class only then: the job spec gathers every
strategy's options and requirements without loading Flower's server side. What a strategy can do
beyond Flower's (`epsilon`, `replay`, `trainable`) is declared on `ObservedStrategy` with a default,
so the round loop calls it without asking first.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from orchestrator.core.protocol import NUM_EXAMPLES, PARTITION_ID, content_bytes
from strategies.hospital import NOTHING, HospitalHook

PARTITION_KEY = PARTITION_ID


class StrategyOptions(BaseModel):
    """The `federated.strategy` section of one strategy; `name` tells the sections apart. Configured
    as every section of the job spec is (`orchestrator.spec.base.Spec`: a typo is an error), without
    importing the spec, which imports the strategies' options."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    name: str


def _no_requirements(job: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Declared:
    """What a strategy module tells the rest of the job about itself (its `DECLARED`)."""

    # the new global model is the replies' weighted mean itself: what central DP clips and noises
    # and what SecAgg+ sums masked (FedAvg; any other arithmetic would need the plain updates)
    plain_average: bool = False
    # the problems this strategy finds with the rest of a federated job (`job` is the JobSpec): one
    # line each, "key: what is wrong and how to fix it", collected with the spec's own
    requires: Callable[[Any], list[str]] = _no_requirements
    # what it adds at each hospital: local terms, extra reply records, state kept between rounds
    hospital: HospitalHook = NOTHING


def corrected_steps(job: Any, name: str) -> list[str]:
    """What a strategy that corrects or normalises each hospital's plain SGD steps (SCAFFOLD,
    FedNova) needs of the job: plain SGD, and a local loop of its own."""
    fed, problems = job.federated, []
    if job.train.optimizer.name != "sgd":
        problems.append(f"train.optimizer.name: {name} corrects plain SGD steps; set train.optimizer.name: sgd "
                        f"(it is '{job.train.optimizer.name}')")
    own = fed.personalize
    if own is not None and own.stateful and fed.dp is None:
        problems.append(f"federated.personalize.method: {own.method} changes each hospital's local training; "
                        f"it does not combine with strategy {name} here (use finetune, or drop strategy {name})")
    if job.model.name == "gan":
        problems.append(f"model.name: gan does not combine with federated.strategy.name ({name}) here (the GAN "
                        "trains its own alternating steps and has no classifier to score)")
    return problems


class NoUsableRepliesError(RuntimeError):
    """Every sampled hospital failed this round: there is nothing to aggregate."""


class HospitalFailedError(RuntimeError):
    """A hospital failed a round and the job does not accept failures."""


@dataclass
class RoundReport:
    server_round: int
    phase: str                                    # "train" | "evaluate"
    hospitals: dict[int, dict[str, float]] = field(default_factory=dict)  # partition-id -> metrics
    failures: list[str] = field(default_factory=list)
    failed_nodes: list[int] = field(default_factory=list)   # the node ids behind `failures`
    extras: dict[int, dict[str, dict]] = field(default_factory=dict)  # partition-id -> config records
    bytes_up: dict[int, int] = field(default_factory=dict)     # partition-id -> its reply's bytes
    bytes_down: dict[int, int] = field(default_factory=dict)   # node id -> the bytes sent to it


Listener = Callable[[RoundReport], None]


@dataclass
class Sampler:
    """Which hospitals take part in a round: all of them, or a sample drawn from (seed, round, phase)."""
    nodes: list[int]                # node id of each hospital, in partition-id order
    seed: int
    fraction_fit: float = 1.0
    fraction_evaluate: float = 1.0
    min_fit: int = 1
    min_evaluate: int = 1

    def choose(self, server_round: int, phase: str) -> list[int]:
        n = len(self.nodes)
        fraction, least = ((self.fraction_fit, self.min_fit) if phase == "train"
                           else (self.fraction_evaluate, self.min_evaluate))
        k = sample_size(n, fraction, least)
        if k >= n:
            return list(self.nodes)
        rng = np.random.default_rng([self.seed, server_round, 0 if phase == "train" else 1])
        return [self.nodes[i] for i in sorted(rng.choice(n, size=k, replace=False))]


def sample_size(num_clients: int, fraction: float, least: int) -> int:
    """Hospitals in a round: the fraction of them, at least `least`, at most all."""
    return min(num_clients, max(int(num_clients * fraction), least))


class _SampledGrid:
    """The grid as a strategy sees it for one round: only the sampled hospitals are connected."""

    def __init__(self, grid, nodes: list[int]):
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name):
        return getattr(self._grid, name)


def evaluates_in(true_round: int, every: int, last_round: int) -> bool:
    """Evaluation every `every` rounds and always in the last one (federated.evaluate_every)."""
    return every <= 1 or true_round % every == 0 or true_round >= last_round


# what ObservedStrategy takes at construction (the registry's `build_strategy` passes them all)
OBSERVING = ("listener", "sampler", "accept_failures", "evaluate_every", "last_round", "num_clients", "trainable")


class ObservedStrategy:
    """Mixin placed before a Flower strategy class (see `observed`)."""

    listener: Listener | None = None
    sampler: Sampler | None = None
    round_offset: int = 0          # a resumed run: Flower counts from 1, the hospitals see the true round
    accept_failures: bool = True
    evaluate_every: int = 1        # federated.evaluate_every: the hospitals evaluate every k rounds ...
    last_round: int = 0            # ... and always in the last one
    num_clients: int = 1           # every hospital of the job (SCAFFOLD moves c by the sampled share)
    trainable: list[str] | None = None   # the model's trainable parameters (None: every float array)
    # what a round checkpoint keeps besides the global model (e.g. FedAdam's moments)
    STATE_ATTRS: tuple[str, ...] = ()

    def __init__(self, *args, listener: Listener | None = None, sampler: Sampler | None = None,
                 accept_failures: bool = True, evaluate_every: int = 1, last_round: int = 0, num_clients: int = 1,
                 trainable: list[str] | None = None, **kwargs):
        self.listener, self.sampler, self.accept_failures = listener, sampler, accept_failures
        self.evaluate_every, self.last_round, self.num_clients = evaluate_every, last_round, num_clients
        self.trainable = trainable
        super().__init__(*args, **kwargs)

    def epsilon(self) -> float | None:
        """The privacy spent so far (None: this strategy releases nothing it accounts for)."""
        return None

    def replay(self, rounds_done: int, sampled: int, num_clients: int) -> None:
        """A resumed run: bring state the checkpoint does not hold (an accountant) up to `rounds_done`."""

    def _round(self, server_round: int) -> int:
        return server_round + self.round_offset

    def _view(self, grid, server_round: int, phase: str):
        return grid if self.sampler is None else _SampledGrid(grid, self.sampler.choose(server_round, phase))

    def configure_train(self, server_round: int, arrays, config, grid):
        r = self._round(server_round)
        self.__dict__["_sent_arrays"] = arrays   # what compressed updates are decoded against
        return self._sending("train", super().configure_train(r, arrays, config, self._view(grid, r, "train")))

    def evaluates(self, true_round: int) -> bool:
        """Whether the hospitals evaluate in this round (federated.evaluate_every)."""
        return evaluates_in(true_round, self.evaluate_every, self.last_round)

    def configure_evaluate(self, server_round: int, arrays, config, grid):
        r = self._round(server_round)
        if not self.evaluates(r):
            return self._sending("evaluate", [])
        return self._sending("evaluate", super().configure_evaluate(r, arrays, config, self._view(grid, r, "evaluate")))

    def _sending(self, phase: str, messages) -> list:
        """Who was asked, so that a hospital that never answers (killed, cut off: a deployment's
        round timeout) counts as a failure of the round, like one that answered with an error."""
        messages = list(messages)
        self.__dict__.setdefault("_asked", {})[phase] = {m.metadata.dst_node_id for m in messages}
        self.__dict__.setdefault("_bytes_down", {})[phase] = {m.metadata.dst_node_id: content_bytes(m.content)
                                                             for m in messages}
        return messages

    def checkpoint_state(self) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for attr in self.STATE_ATTRS:
            value = getattr(self, attr, None)
            if value is not None:
                out[attr] = {k: np.asarray(v) for k, v in value.items()}
        return out

    def load_checkpoint_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        for attr, value in state.items():
            if attr in self.STATE_ATTRS:
                setattr(self, attr, {k: np.asarray(v) for k, v in value.items()})

    def _ordered(self, server_round: int, replies: Iterable, phase: str) -> list:
        replies = list(replies)
        good = [m for m in replies if not m.has_error()]
        bad = [m for m in replies if m.has_error()]
        found = {id(m): _metrics(m) for m in good}
        sizes = {id(m): content_bytes(m.content) for m in good}   # as they travelled (compressed, if they were)
        if phase == "train":
            self._decompress(good)
        good.sort(key=lambda m: int(found[id(m)].get(PARTITION_KEY, m.metadata.src_node_id)))
        report = RoundReport(server_round, phase)
        report.bytes_down = self.__dict__.get("_bytes_down", {}).pop(phase, {})
        for m in good:
            metrics = found[id(m)]
            pid = int(metrics.get(PARTITION_KEY, -1))
            report.bytes_up[pid] = sizes[id(m)]
            report.hospitals[pid] = {
                k: float(v) for k, v in metrics.items() if k != PARTITION_KEY and isinstance(v, (int, float))
            }
            if m.content.config_records:
                report.extras[pid] = {name: dict(rec) for name, rec in m.content.config_records.items()}
        report.failures = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in bad]
        asked = self.__dict__.get("_asked", {}).pop(phase, set())
        silent = sorted(asked - {m.metadata.src_node_id for m in replies})[:max(0, len(asked) - len(replies))]
        report.failures += [f"node {n}: no reply within federated.round_timeout_s" for n in silent]
        # an error reply Flower's SuperLink makes for an unreachable node comes from the SuperLink
        # itself: the hospitals asked and not answering well are the failed ones
        answered = {m.metadata.src_node_id for m in good}
        report.failed_nodes = sorted(asked - answered) if asked else [m.metadata.src_node_id for m in bad] + silent
        if self.listener is not None:
            self.listener(report)
        if bad and not self.accept_failures:
            raise HospitalFailedError(f"round {server_round} ({phase}): {len(bad)} hospital(s) failed and "
                                      f"federated.accept_failures is false: {report.failures[0]}")
        if replies and not good:   # every reason (a hospital's policy refusal among them), a line each at most
            reasons = "; ".join(f.strip().splitlines()[0][:400] for f in report.failures)
            raise NoUsableRepliesError(f"round {server_round} ({phase}): every hospital failed: {reasons}")
        return good + bad

    def _decompress(self, replies: list) -> None:
        """federated.compression: each update as the weights it stands for (the global model sent
        this round plus the decoded update), before any arithmetic sees it."""
        from orchestrator.core.compression import decompress_update, is_encoded
        from orchestrator.core.protocol import ARRAYS, from_state, to_state

        sent = self.__dict__.get("_sent_arrays")
        for m in replies:
            record = m.content.array_records.get(ARRAYS)
            if record is not None and sent is not None and is_encoded(record.keys()):
                m.content[ARRAYS] = from_state(decompress_update(to_state(record), to_state(sent)))

    def _train_replies(self, server_round: int, replies: Iterable) -> tuple[list, list]:
        """For strategies with arithmetic of their own: the usable replies' contents in hospital
        order (reported to the listener), and each one's metrics."""
        good = [m for m in self._ordered(self._round(server_round), replies, "train") if not m.has_error()]
        return [m.content for m in good], [_metrics(m) for m in good]

    def aggregate_train(self, server_round: int, replies: Iterable):
        r = self._round(server_round)
        ordered = self._ordered(r, replies, "train")
        return super().aggregate_train(r, [m for m in ordered if not m.has_error()])

    def aggregate_evaluate(self, server_round: int, replies: Iterable):
        r = self._round(server_round)
        if not self.evaluates(r):
            return None  # a round without evaluation logs no eval metrics
        ordered = self._ordered(r, replies, "evaluate")
        return super().aggregate_evaluate(r, [m for m in ordered if not m.has_error()])


@lru_cache(maxsize=None)
def observed(flower_class: type, *mixins: type) -> type:
    """`class X(*mixins, ObservedStrategy, flower_class)`, made once per combination (stable identity)."""
    name = next((m.NAME for m in mixins if hasattr(m, "NAME")), flower_class.__name__)
    return type(name, (*mixins, ObservedStrategy, flower_class), {"__module__": __name__})


def _metrics(message):
    from flwr.app import MetricRecord

    records = message.content.metric_records
    return next(iter(records.values())) if records else MetricRecord()


__all__ = ["NUM_EXAMPLES", "ObservedStrategy", "RoundReport", "Sampler", "StrategyOptions", "observed", "sample_size"]
