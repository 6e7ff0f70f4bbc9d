"""kind: local. The baseline a hospital asks about first: every hospital trains the same model
alone on its own rows, with the federated job's budget (federated.rounds x train.epochs epochs,
the same loop, optimizer and schedule), scaled and imputed from its own training rows only, and
is scored on its own test rows after every `train.epochs` epochs (one step per "round", so the
curves line up with a federated run's). Nothing is shared; the run holds per-hospital metrics,
the consortium's pooled `eval/...` and the mean over hospitals `site_mean/...`.

With `federated.crossval` every hospital's model is also scored at every other hospital.
"""
from __future__ import annotations

import io
import time

import numpy as np
import torch

from orchestrator.jobs import progress
from orchestrator.jobs.base import Context, Description, JobKind, Outcome
from orchestrator.core.metrics import site_mean
from orchestrator.jobs.sites import ROWS, load_hospitals, pooled, score
from orchestrator.jobs.transfer import initial_model
from orchestrator.core.models import standardizer, train_mode
from orchestrator.core.training import Objective, class_weights, train_epochs
from orchestrator.spec.job import JobSpec


def run_local(ctx: Context) -> Outcome:
    job, plan, run = ctx.job, ctx.plan, ctx.run
    rounds, epochs = job.federated.rounds, job.train.epochs
    hospitals = load_hospitals(job, plan)
    progress.begin("hospital", len(hospitals), f"{job.name}: {len(hospitals)} hospitals, each alone")
    t0 = time.perf_counter()
    # per round: each hospital's (scores, sums) and train loss
    scores: dict[int, list] = {r: [] for r in range(1, rounds + 1)}
    models: dict[str, torch.nn.Module] = {}
    first_round_s = None
    for h in hospitals:
        model, _ = initial_model(job, plan.num_features, plan.num_classes, ctx.start, h.raw.X_train, h.raw.y_train)
        X, y, _, _ = h.tensors(standardizer(model).mean.detach().numpy())
        counts = None if plan.task != "classification" else np.bincount(h.raw.y_train, minlength=plan.num_classes)
        objective = Objective.of(job, plan.num_classes, class_weights(job.train, counts), model, plan.schema.classes)
        prefix = f"hospital_{h.name}"

        def on_epoch(epoch: int, loss: float, h=h, model=model, objective=objective, prefix=prefix) -> bool:
            if epoch % epochs:
                return False
            r = epoch // epochs
            res, sums = score(h, model, objective)
            train_mode(model)
            scores[r].append((res, sums))
            m = {f"{prefix}/eval/{k}": v for k, v in res.items() if k != ROWS and not np.isnan(v)}
            m[f"{prefix}/eval/num_examples"] = res[ROWS]
            m[f"{prefix}/train/loss"] = loss
            run.log_metrics(m, r)
            return False

        train_epochs(model, X, y, job.train, rounds * epochs, seed=job.seed * 100_003 + h.partition_id,
                     on_epoch=on_epoch, objective=objective)
        models[h.name] = model
        if first_round_s is None:
            first_round_s = time.perf_counter() - t0
        last = scores[rounds][-1][0] if scores[rounds] else {}
        progress.step("hospital", len(models), len(hospitals),
                      {f"eval/{k}": last[k] for k in ("accuracy", "mse") if k in last}, note=h.name)
    for r in range(1, rounds + 1):
        m = {f"eval/{k}": v for k, v in pooled(scores[r], plan.task, plan.schema.classes).items()}
        m.update({f"site_mean/{k}": v for k, v in site_mean([res for res, _ in scores[r]]).items()})
        m["eval/hospitals"] = len(scores[r])
        m["time/round_end_s"] = time.perf_counter() - t0
        run.log_metrics(m, r)
    run.flush()
    final = {k: v for k, v in run.last.items() if k.startswith(("eval/", "site_mean/"))}
    if job.tracking.log_model and job.tracking.enabled:
        for name, model in models.items():   # each hospital's own model: state dict, torch.load-able
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            run.log_bytes(buf.getvalue(), f"local_models/{name}.pt")
    outcome = Outcome(model=None, final=final, first_round_s=first_round_s, first_round_at=time.time())
    if job.federated.crossval:
        from orchestrator.jobs.crossval import in_process, log_crossval

        matrix = in_process(job, plan, {f"local_{name}": m for name, m in models.items()}, hospitals)
        outcome.final.update(log_crossval(run, job, matrix))
        outcome.crossval = matrix
    return outcome


class Local(JobKind):
    name = "local"

    def describe(self, job: JobSpec, plan) -> Description:
        n = len(plan.hospitals)
        return Description(
            f"{job.name}-local-{n}h",
            f"Local-only baseline: each of {n} hospitals trains {job.model.name} alone on its own rows, "
            f"{job.federated.rounds} x {job.train.epochs} epochs, scored on its own test rows "
            f"({job.data.path or job.data.source}).",
            tags={"partition": job.federated.partition.name, "hospitals": ",".join(plan.hospitals)[:4000]},
            params={"federated.num_clients": n, "federated.hospital_sizes": ",".join(map(str, plan.hospital_sizes))})

    def run(self, ctx: Context) -> Outcome:
        return run_local(ctx)


KIND = Local()
