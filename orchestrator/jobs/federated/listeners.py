"""What happens when a round ends, one small listener each (after Ray Train v2's callbacks).

Flower calls the ServerApp's evaluate function last in every round; `Rounds.central_eval` scores the
global model on the server's held-out rows there, then hands the round end to each listener in
order. The order is the contract: the round's timing and privacy spend join its metrics before they
are logged, the stopping rule reads what was logged, and the metrics reach the store before the
round's checkpoint does (a run killed in between redoes the round).

A job's own listeners (`orchestrator.run(..., listeners=[...])`) come after these: they see every
round end, round 0 (the census) included, in every engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from orchestrator.core.protocol import to_state
from orchestrator.jobs import progress
from orchestrator.jobs.federated.checkpoints import save_round

if TYPE_CHECKING:
    from pathlib import Path

    from flwr.app import ArrayRecord

    from orchestrator.jobs.federated.checkpoints import RoundWriter
    from orchestrator.jobs.federated.rounds import RoundLogger
    from orchestrator.jobs.federated.stopping import BestRound
    from orchestrator.spec.job import JobSpec
    from orchestrator.tracking.protocol import Run


@dataclass
class RoundEnd:
    """One round's end, as the listeners see it."""

    round: int                  # the job's round (a resumed run counts on); 0: the census, before training
    rounds: int                 # of the job, in all
    arrays: ArrayRecord         # the global model after the round
    evaluated: bool             # a round the job evaluates (federated.evaluate_every)
    metrics: dict[str, float] = field(default_factory=dict)   # logged for this round: listeners may add
    stop: bool = False          # a listener asks the rounds to stop after this one


class RoundListener(Protocol):
    def round_end(self, end: RoundEnd) -> None: ...


class Rounds(Protocol):
    """What the standard listeners read of the job's server side (`server_app.Rounds`)."""

    job: JobSpec
    run: Run
    strategy: Any                         # the Flower strategy, once built (None for SecAgg+)
    best: BestRound | None
    ckpt_dir: Path
    writer: RoundWriter
    first_round_s: float | None
    first_round_at: float | None
    logger: RoundLogger                   # the round reports as metrics; which hospitals failed


class Timing:
    """time/round_end_s, and when the first round ended (the job's time to a first result)."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds
        self.t0 = time.perf_counter()

    def round_end(self, end: RoundEnd) -> None:
        if end.round == 0:
            return
        now = time.perf_counter() - self.t0
        end.metrics["time/round_end_s"] = now
        if self.rounds.first_round_s is None:
            self.rounds.first_round_s, self.rounds.first_round_at = now, time.time()


class PrivacySpend:
    """dp/epsilon: the privacy spent so far, from a strategy with an accountant (`epsilon()` not None)."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds

    def round_end(self, end: RoundEnd) -> None:
        strategy = self.rounds.strategy
        epsilon = strategy.epsilon() if strategy is not None and end.round > 0 else None
        if epsilon is not None:
            end.metrics["dp/epsilon"] = epsilon


class LogMetrics:
    """The round's metrics into the run (buffered: the checkpoint listener flushes them)."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds

    def round_end(self, end: RoundEnd) -> None:
        self.rounds.run.log_metrics(end.metrics, end.round)


class EarlyStopping:
    """federated.early_stopping and the best round (cross-site validation): reads what was logged."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds

    def round_end(self, end: RoundEnd) -> None:
        best = self.rounds.best
        if best is not None and end.evaluated and end.round > 0:
            end.stop = best.see(end.round, self.rounds.run.last, end.arrays) or end.stop


class Progress:
    """The console's bar (rounds done, the headline metric, hospitals answered and failed)."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds
        self.told = 0   # the hospitals' refusals already shown

    def round_end(self, end: RoundEnd) -> None:
        if end.round == 0:
            return
        last = self.rounds.run.last
        fresh, self.told = self.rounds.logger.refusals[self.told:], len(self.rounds.logger.refusals)
        progress.step("round", end.round, end.rounds, last, answered=int(last.get("train/hospitals", 0)),
                      failed=int(last.get("train/failures", 0)), note="; ".join(fresh))


class DeploymentLog:
    """Flower's deployment engine: one line a round in the ServerApp's log, which `consortium run` streams."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds
        self.told = 0

    def round_end(self, end: RoundEnd) -> None:
        if end.round == 0:
            return
        for refusal in self.rounds.logger.refusals[self.told:]:   # a hospital's site policy, in its words
            print(f"[consortium] {refusal}", flush=True)
        self.told = len(self.rounds.logger.refusals)
        last = self.rounds.run.last
        shown = [f"{k} {last[k]:.4f}" for k in ("eval/accuracy", "eval/f1", "eval/mse", "eval/r2", "eval/loss")
                 if k in last][:2]
        failed = self.rounds.logger.failed.get("train", [])
        print(f"[consortium] round {end.round}/{end.rounds}: {', '.join(shown)}; "
              f"{int(last.get('eval/hospitals', 0))} hospitals answered, "
              f"{int(last.get('train/failures', 0))} failed training"
              + (f" ({', '.join(failed)}: the round went on without them)" if failed else ""), flush=True)


class Report:
    """Every round's pooled metrics to a callback: a sweep's trial reports them to Ray Tune."""

    def __init__(self, rounds: Rounds, report: Callable[[int, dict], Any]):
        self.rounds, self.report = rounds, report

    def round_end(self, end: RoundEnd) -> None:
        if end.round > 0:
            self.report(end.round, {k: v for k, v in self.rounds.run.last.items() if not k.startswith("hospital_")})


class Checkpoint:
    """The round's metrics to the store, then its checkpoint (global model + strategy state), on the
    writer thread while the next round trains. Round 0 and SecAgg+ (no strategy) only flush."""

    def __init__(self, rounds: Rounds):
        self.rounds = rounds

    def round_end(self, end: RoundEnd) -> None:
        rounds, run, strategy = self.rounds, self.rounds.run, self.rounds.strategy
        if end.round > 0 and strategy is not None:
            snapshot = to_state(end.arrays), {a: {k: np.array(v) for k, v in d.items()}
                                              for a, d in strategy.checkpoint_state().items()}
            ckpt_dir, server_round = rounds.ckpt_dir, end.round

            def write() -> None:   # the metrics reach the store first: a run killed in between redoes the round
                run.flush()
                save_round(ckpt_dir, server_round, *snapshot)

            rounds.writer.submit(write)
        else:
            rounds.writer.submit(run.flush)


def standard(rounds: Rounds, report: Callable[[int, dict], Any] | None = None) -> list[RoundListener]:
    """The listeners of every federated job, in their order (see the module doc)."""
    listeners: list[RoundListener] = [Timing(rounds), PrivacySpend(rounds), LogMetrics(rounds), EarlyStopping(rounds),
                                      Progress(rounds)]
    if rounds.job.federated.engine == "deployment":
        listeners.append(DeploymentLog(rounds))
    if report is not None:
        listeners.append(Report(rounds, report))
    listeners.append(Checkpoint(rounds))
    return listeners
