"""Centralized baseline: the same model and loop on the pooled data, evaluated every epoch."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from orchestrator.config import JobSpec
from orchestrator.models import build_model, mean_scale, moments, standardizer
from orchestrator.plan import DataPlan
from orchestrator.tracking import TrackedRun
from orchestrator.training import evaluate, tensors, train_epochs


@dataclass
class CentralizedOutcome:
    model: torch.nn.Module
    final: dict[str, float] = field(default_factory=dict)
    first_round_s: float | None = None


def run_centralized(job: JobSpec, plan: DataPlan, run: TrackedRun) -> CentralizedOutcome:
    data = plan.centralized
    torch.manual_seed(job.seed)
    model = build_model(job.model, plan.num_features, plan.num_classes)
    if job.data.standardize:
        standardizer(model).set(*mean_scale(*moments(data.X_train)))
    X, y = tensors(data.X_train, data.y_train)
    Xt, yt = tensors(data.X_test, data.y_test)
    # The test rows are the central held-out split when the data has one (the same rows a federated
    # run's central/accuracy uses), else the union of every hospital's own test split.
    same_as_central = plan.central is not None
    outcome = CentralizedOutcome(model=model)
    t0 = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> None:
        r = evaluate(model, Xt, yt, job.train.loss)
        model.train()
        m = {"train/loss": loss, "eval/loss": r["loss"], "eval/accuracy": r["accuracy"],
             "time/epoch_end_s": time.perf_counter() - t0}
        if same_as_central:
            m.update({"central/loss": r["loss"], "central/accuracy": r["accuracy"]})
        run.log_metrics(m, epoch)
        run.flush()
        if outcome.first_round_s is None:
            outcome.first_round_s = time.perf_counter() - t0

    train_epochs(model, X, y, job.train, job.train.epochs, seed=job.seed, on_epoch=on_epoch)
    outcome.final = {k: v for k, v in run.last.items() if not k.startswith("time/")}
    return outcome
