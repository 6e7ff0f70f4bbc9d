"""kind: federated. Hospitals train in rounds under a Flower strategy; only updates and sums travel.

This module is the kind (what the runner asks of it); the rounds are `server_app.Rounds`, the
hospitals `clients.client_app`, the engines `engines`, round 0 `census`, per-round metrics
`rounds`, round checkpoints `checkpoints`.
"""
from __future__ import annotations

import os

from orchestrator.jobs.base import Context, Description, JobKind, Launched, Outcome
from orchestrator.jobs.federated.checkpoints import (
    load_last_round,
    mark_finished,
    new_checkpoint_dir,
    resumed_checkpoint_dir,
)
from orchestrator.jobs.federated.engines import run_engine
from orchestrator.jobs.federated.server_app import Rounds
from orchestrator.jobs.runtime import EarlyRuntime, quiet_flower
from orchestrator.jobs.transfer import initial_model
from orchestrator.spec.engines import choose_engine
from orchestrator.spec.job import JobSpec


def run_federated(ctx: Context) -> Outcome:
    job, plan, run, start = ctx.job, ctx.plan, ctx.run, ctx.start
    fed = job.federated
    model, notes = initial_model(job, plan.num_features, plan.num_classes, start)
    if notes:
        run.log_params(notes)
    ckpt_dir = resumed_checkpoint_dir(run) if ctx.resume else new_checkpoint_dir()
    rounds = Rounds(job, plan, run, model, ckpt_dir,
                    copied=set(start.weights) if start is not None and start.weights is not None else set(),
                    on_round=ctx.on_epoch, extra_listeners=list(ctx.listeners))
    if ctx.resume and (last := load_last_round(ckpt_dir)) is not None:
        rounds.done, rounds.saved_model, rounds.saved_strategy = last
    engine, reason = choose_engine(job)
    if not ctx.resume:
        run.set_tags({"federated.checkpoints": str(ckpt_dir), "federated.engine": engine})
        run.log_params({"federated.engine_ran": engine, "federated.engine_reason": reason})
    quiet_flower(os.environ.get("CONSORTIUM_VERBOSE") == "1")
    from clients.client_app import app, secagg_app

    runtime = ctx.launched.runtime if isinstance(ctx.launched, SimulationLaunched) else None
    try:
        run_engine(engine, rounds, secagg_app if fed.secure else app, len(plan.hospitals), runtime,
                   deployed=ctx.launched)
    finally:
        rounds.writer.close()  # every round's metrics and checkpoint written, also when stopped
    mark_finished(ckpt_dir)   # ended normally (early stopping included): nothing to resume
    outcome = Outcome(model=model, final={k: v for k, v in run.last.items() if "/" in k and not k.startswith("hospital_")},
                      first_round_s=rounds.first_round_s, first_round_at=rounds.first_round_at,
                      label_counts=rounds.label_counts, confusion=rounds.logger.confusion,
                      attributions=rounds.attributions, crossval=rounds.crossval)
    outcome.final.update(rounds.final_metrics)   # early stopping: the restored round's
    if job.model.name == "gan":   # the generator: TSTR, a sample, logged whole (no classifier report)
        from orchestrator.jobs.federated.synthetic import finish_gan

        final, record = finish_gan(job, plan, run, model, rounds.label_counts)
        outcome.final.update(final)
        outcome.model = None
        if record is not None:
            outcome.model_uri, outcome.registered = record.model_uri, record.registry_uri
            if record.registry_uri:
                run.set_tags({"registered_model": record.registry_uri})
    if rounds.crossval:
        from orchestrator.jobs.crossval import log_crossval

        outcome.final.update(log_crossval(run, job, rounds.crossval))
    return outcome


class SimulationLaunched(Launched):
    """Flower's simulation engine: its Ray runtime starts while MLflow opens the run (or, with
    `ray.address`, this driver joins that cluster; one that does not answer is a user error)."""

    def __init__(self, address: str | None = None):
        from orchestrator.jobs.runtime import start_simulation_runtime

        self.address = address
        if address is not None and address != "auto":
            from orchestrator.jobs.ray.session import reachable
            from orchestrator.spec.errors import UserError

            if not reachable(address):
                raise UserError("ray.address", [f"nothing answers at {address}: start a head with `ray start "
                                                "--head --node-ip-address=127.0.0.1` or fix the address"])
        self.runtime: EarlyRuntime = start_simulation_runtime(address)

    def join(self) -> None:
        if self.address is None:
            return   # the local runtime: Flower's start waits for it, after the run is open
        try:
            self.runtime.join()
        except (ConnectionError, RuntimeError, ValueError) as exc:
            from orchestrator.spec.errors import UserError

            raise UserError("ray.address", [f"cannot join the Ray cluster at {self.address}: "
                                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]) from None

    def stop(self) -> None:
        self.runtime.stop()  # Flower shuts its runtime down; this covers early exits


class Federated(JobKind):
    name = "federated"

    def describe(self, job: JobSpec, plan) -> Description:
        p, n = job.federated.partition, len(plan.hospitals)
        part = f"dirichlet{p.alpha:g}" if p.name == "dirichlet" else p.name
        shown = f"Dirichlet(alpha={p.alpha:g})" if p.name == "dirichlet" else p.name
        names = ",".join(plan.hospitals)
        if len(names) > 4000:  # MLflow caps tag values; the partition table lists every hospital
            names = ",".join(plan.hospitals[:200]) + f",... ({n} hospitals)"
        strategy = job.federated.strategy.name
        return Description(
            f"{job.name}-{strategy}-{part}-{n}h",
            f"Federated {strategy} over {n} hospitals ({shown} partition), {job.federated.rounds} rounds x "
            f"{job.train.epochs} local epoch(s): {job.model.name} on {job.data.path or job.data.source}.",
            tags={"strategy": strategy, "partition": p.name, "hospitals": names},
            params={"federated.num_clients": n, "federated.hospital_sizes": ",".join(map(str, plan.hospital_sizes))})

    def check(self, job: JobSpec, plan) -> None:
        stopping = job.federated.early_stopping
        if stopping is not None and stopping.metric.startswith("central/") and plan.central is None:
            from orchestrator.spec.errors import UserError

            raise UserError("federated.early_stopping.metric", [
                f"'{stopping.metric}': this data has no central held-out split (each hospital keeps its own "
                "test rows); watch eval/... or site_mean/..."])

    def launch(self, job: JobSpec) -> Launched:
        return SimulationLaunched(job.ray.address) if choose_engine(job)[0] == "simulation" else Launched()

    def run(self, ctx: Context) -> Outcome:
        return run_federated(ctx)


KIND = Federated()
