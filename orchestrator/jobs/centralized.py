"""Centralized baseline: the same model and loop on the pooled data, evaluated every epoch."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.jobs import progress
from orchestrator.jobs.base import Context, Description, JobKind, Outcome
from orchestrator.core.dataplan import DataPlan
from orchestrator.spec.job import JobSpec
from orchestrator.core.training import (
    EarlyStopping,
    Objective,
    class_weights,
    evaluate,
    lr_factor,
    tensors,
    train_epochs,
    validation_split,
)
from orchestrator.core.models import train_mode
from orchestrator.jobs.transfer import Start, initial_model

if TYPE_CHECKING:
    from orchestrator.tracking.store import TrackedRun


def run_centralized(job: JobSpec, plan: DataPlan, run: TrackedRun, start: Start | None = None,
                    on_epoch_metrics=None) -> Outcome:
    """`on_epoch_metrics(epoch, metrics)` sees every epoch's metrics (a sweep reports them to Ray Tune)."""
    data = plan.centralized
    X_np, y_np = data.X_train, data.y_train
    stopper = None
    val = None
    if job.train.early_stopping.enabled:
        stopper = EarlyStopping(job.train.early_stopping)
        tr, va = validation_split(len(y_np), job.train.early_stopping.validation_fraction, job.seed)
        val = tensors(X_np[va], y_np[va])
        X_np, y_np = X_np[tr], y_np[tr]
    model, notes = initial_model(job, plan.num_features, plan.num_classes, start, X_np, y_np)
    if notes:
        run.log_params(notes)
    counts = None if plan.task != "classification" else np.bincount(y_np, minlength=plan.num_classes)
    objective = Objective.of(job, plan.num_classes, class_weights(job.train, counts), model, plan.schema.classes)
    X, y = tensors(X_np, y_np)
    Xt, yt = tensors(data.X_test, data.y_test)
    # The test rows are the central held-out split when the data has one (the same rows a federated
    # run's central/accuracy uses), else the union of every hospital's own test split.
    same_as_central = plan.central is not None
    outcome = Outcome(model=model)
    t0 = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> bool:
        r = evaluate(model, Xt, yt, objective)
        m = {"train/loss": loss, "train/lr": job.train.optimizer.lr * lr_factor(job.train.schedule, epoch - 1,
                                                                                 job.train.epochs),
             "time/epoch_end_s": time.perf_counter() - t0}
        m.update({f"eval/{k}": v for k, v in r.items() if k != "num_examples"})
        if same_as_central:
            m.update({f"central/{k}": v for k, v in r.items() if k != "num_examples"})
        stop = False
        if stopper is not None:
            v = evaluate(model, *val, objective)
            m.update({f"val/{k}": v for k, v in v.items() if k != "num_examples"})
            watched = job.train.early_stopping.metric
            if watched not in m:
                from orchestrator.spec.errors import UserError

                raise UserError("train.early_stopping.metric",
                                [f"'{watched}' is not a metric of this job; it has "
                                 f"{', '.join(k for k in m if k.startswith('val/'))}"])
            stop = stopper.step(epoch, m[watched], model)
        train_mode(model)
        run.log_metrics(m, epoch)
        run.flush()
        if on_epoch_metrics is not None:
            on_epoch_metrics(epoch, m)
        progress.step("epoch", epoch, job.train.epochs, m)
        if outcome.first_round_s is None:
            outcome.first_round_s = time.perf_counter() - t0
            outcome.first_round_at = time.time()
        return stop

    progress.begin("epoch", job.train.epochs, f"{job.name}: {job.model.name}, pooled data")
    train_epochs(model, X, y, job.train, job.train.epochs, seed=job.seed, on_epoch=on_epoch, objective=objective)
    outcome.final = {k: v for k, v in run.last.items() if not k.startswith("time/")}
    if stopper is not None:
        summary = stopper.summary()
        if stopper.restore(model):
            # the final metrics are those of the restored (best) weights
            r = evaluate(model, Xt, yt, objective)
            final = {f"eval/{k}": v for k, v in r.items() if k != "num_examples"}
            if same_as_central:
                final.update({f"central/{k}": v for k, v in r.items() if k != "num_examples"})
            outcome.final.update(final)
            summary["early_stopping/restored"] = 1.0
            run.log_metrics({f"best/{k}": v for k, v in final.items()}, stopper.best_epoch)
        run.log_metrics(summary, 0)
        outcome.final.update(summary)
        run.flush()
    return outcome


class Centralized(JobKind):
    name = "centralized"

    def describe(self, job: JobSpec, plan: DataPlan) -> Description:
        data = job.data.path or job.data.source
        return Description(f"{job.name}-centralized",
                           f"Centralized baseline on the pooled data, {job.train.epochs} epochs: "
                           f"{job.model.name} on {data}.")

    def run(self, ctx: Context) -> Outcome:
        return run_centralized(ctx.job, ctx.plan, ctx.run, ctx.start, on_epoch_metrics=ctx.on_epoch)


KIND = Centralized()
