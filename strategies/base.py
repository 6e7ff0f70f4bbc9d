"""What every Consortium strategy adds to Flower's: a fixed aggregation order and per-hospital reports.

Flower sums client updates in arrival order, which varies run to run; sorting replies by hospital
makes a seeded run reproduce its metrics exactly. The listener is how the orchestrator hears about
each round (a strategy itself never touches the file system or MLflow).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Message, MetricRecord

PARTITION_KEY = "partition-id"


class NoUsableRepliesError(RuntimeError):
    """Every sampled hospital failed this round: there is nothing to aggregate."""


@dataclass
class RoundReport:
    server_round: int
    phase: str                                    # "train" | "evaluate"
    hospitals: dict[int, dict[str, float]] = field(default_factory=dict)  # partition-id -> metrics
    failures: list[str] = field(default_factory=list)
    extras: dict[int, dict[str, dict]] = field(default_factory=dict)  # partition-id -> config records


Listener = Callable[[RoundReport], None]


class ObservedStrategy:
    """Mixin placed before a Flower strategy class: `class FedAvg(ObservedStrategy, flwr.FedAvg)`."""

    listener: Listener | None = None

    def _ordered(self, server_round: int, replies: Iterable[Message], phase: str) -> list[Message]:
        replies = list(replies)
        good = [m for m in replies if not m.has_error()]
        bad = [m for m in replies if m.has_error()]
        good.sort(key=lambda m: int(_metrics(m).get(PARTITION_KEY, m.metadata.src_node_id)))
        report = RoundReport(server_round, phase)
        for m in good:
            metrics = _metrics(m)
            pid = int(metrics.get(PARTITION_KEY, -1))
            report.hospitals[pid] = {
                k: float(v) for k, v in metrics.items() if k != PARTITION_KEY and isinstance(v, (int, float))
            }
            if m.content.config_records:
                report.extras[pid] = {name: dict(rec) for name, rec in m.content.config_records.items()}
        report.failures = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in bad]
        if self.listener is not None:
            self.listener(report)
        if replies and not good:
            reasons = "; ".join(report.failures[:3])
            raise NoUsableRepliesError(f"round {server_round} ({phase}): every hospital failed: {reasons}")
        return good + bad

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, self._ordered(server_round, replies, "train"))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, self._ordered(server_round, replies, "evaluate"))


def _metrics(message: Message) -> MetricRecord:
    records = message.content.metric_records
    return next(iter(records.values())) if records else MetricRecord()
