"""The best round, and round-level early stopping (`federated.early_stopping`).

`BestRound` watches one metric the server sees at the end of every evaluated round and keeps that
round's global model when it improves: the "best round" of cross-site validation and, with a
patience, the early stopper. Stopping raises `StopRounds` from the round's end (after its metrics
and checkpoint are handed to the writer), which `Rounds.main` catches; the job then ends with the
best round's model (restore_best) and its metrics as the run's final ones.
"""
from __future__ import annotations

import math

import numpy as np

from orchestrator.core.protocol import from_state, to_state


class StopRounds(Exception):
    """The watched metric stopped improving: no more rounds."""


class BestRound:
    def __init__(self, metric: str, mode: str = "min", min_delta: float = 0.0, patience: int | None = None,
                 restore_best: bool = True, key: str | None = None):
        self.metric, self.mode, self.min_delta, self.patience = metric, mode, min_delta, patience
        self.restore_best, self.key = restore_best, key   # key: the YAML key a wrong metric is blamed on
        self.round, self.value, self.state = 0, None, None
        self.bad, self.stopped = 0, 0
        self.last_arrays = None

    @classmethod
    def of(cls, job, has_central: bool) -> BestRound | None:
        fed = job.federated
        spec = fed.early_stopping
        if spec is not None:
            return cls(spec.metric, spec.mode, spec.min_delta, spec.patience, spec.restore_best,
                       key="federated.early_stopping.metric")
        if fed.crossval:   # the best round for the cross-site matrix: the lowest loss the server sees
            return cls("central/loss" if has_central else "eval/loss")
        return None

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        return value < self.value - self.min_delta if self.mode == "min" else value > self.value + self.min_delta

    def see(self, server_round: int, last: dict, arrays) -> bool:
        """This evaluated round's metrics (the run's latest values); True when the rounds should stop."""
        self.last_arrays = arrays
        if self.metric not in last:
            if self.key is None:
                return False
            from orchestrator.spec.errors import UserError

            seen = sorted(k for k in last if k.startswith(("eval/", "central/", "site_mean/")))
            raise UserError(self.key, [f"'{self.metric}' is not a metric of this job's rounds; they have "
                                       f"{', '.join(seen) or 'none'}"])
        value = float(last[self.metric])
        if self.improved(value):
            self.round, self.value, self.bad = server_round, value, 0
            self.state = {k: np.array(v) for k, v in to_state(arrays).items()}
            return False
        self.bad += 1
        if self.patience is not None and self.bad >= self.patience:
            self.stopped = server_round
            return True
        return False

    def best_arrays(self):
        return from_state(self.state) if self.state is not None else None

    def finish(self, run, final) -> tuple[object, dict[str, float]]:
        """After the rounds (early stopping only): the model to end with, and the final metrics that
        go with it (the best round's, as measured then, when it is restored)."""
        summary = {"early_stopping/best_round": float(self.round),
                   "early_stopping/best_value": float(self.value) if self.value is not None else float("nan"),
                   "early_stopping/stopped_round": float(self.stopped)}
        finals: dict[str, float] = {}
        if self.restore_best and self.state is not None:
            final = self.best_arrays()
            summary["early_stopping/restored"] = 1.0
            keys = [k for k in run.metric_keys() if k.startswith(("eval/", "central/", "site_mean/"))]
            for key, points in run.history(keys).items():
                at = [v for step, v in points if step == self.round]
                if at:
                    finals[key] = at[-1]
            run.log_metrics({f"best/{k}": v for k, v in finals.items()}, self.round)
        run.log_metrics(summary, 0)
        return final, {**finals, **summary}
