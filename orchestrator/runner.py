"""One job, start to end: check the data, open the MLflow run, train, log and register the model."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from orchestrator.config import JobSpec
from orchestrator.loading import dump_yaml, flatten
from orchestrator.plan import DataPlan, plan_data
from orchestrator.runtime import prepare_environment


@dataclass
class JobResult:
    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    final: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    registered: str | None = None          # models:/NAME/VERSION
    wall_s: float = 0.0
    first_round_at: float | None = None    # time.time() when the first round/epoch ended
    round_ends_s: list[float] = field(default_factory=list)  # federated: seconds from start, per round


def run_name(job: JobSpec, plan: DataPlan) -> str:
    """Tells runs apart at a glance in the MLflow UI: `hospitals-fedavg-dirichlet0.5-10h`."""
    if job.kind == "federated":
        p = job.federated.partition
        part = f"dirichlet{p.alpha:g}" if p.name == "dirichlet" else p.name
        return f"{job.name}-{job.federated.strategy.name}-{part}-{len(plan.hospitals)}h"
    if job.kind == "ray":
        return f"{job.name}-ray-{job.ray.num_workers}w{'-gpu' if job.ray.use_gpu else ''}"
    return f"{job.name}-centralized"


def describe(job: JobSpec, plan: DataPlan) -> str:
    """The run's description in the MLflow UI."""
    data = job.data.path or job.data.source
    what = f"{job.model.name} on {data}"
    if job.kind == "federated":
        p = job.federated.partition
        part = f"Dirichlet(alpha={p.alpha:g})" if p.name == "dirichlet" else p.name
        return (f"Federated {job.federated.strategy.name} over {len(plan.hospitals)} hospitals ({part} partition), "
                f"{job.federated.rounds} rounds x {job.train.epochs} local epoch(s): {what}.")
    if job.kind == "ray":
        return (f"Data-parallel (DDP) training on {job.ray.num_workers} Ray Train worker(s)"
                f"{' with GPUs' if job.ray.use_gpu else ''}, {job.train.epochs} epochs: {what}.")
    return f"Centralized baseline on the pooled data, {job.train.epochs} epochs: {what}."


def run_tags(job: JobSpec, plan: DataPlan) -> dict[str, str]:
    from orchestrator.runtime import git_commit

    tags = {"kind": job.kind, "dataset": job.data.path or job.data.source, "job": job.name,
            "git_commit": git_commit(), "model": job.model.name, "mlflow.note.content": describe(job, plan)}
    if job.kind == "federated":
        names = ",".join(plan.hospitals)
        if len(names) > 4000:  # MLflow caps tag values; the partition table lists every hospital
            names = ",".join(plan.hospitals[:200]) + f",... ({len(plan.hospitals)} hospitals)"
        tags.update({"strategy": job.federated.strategy.name, "partition": job.federated.partition.name,
                     "hospitals": names})
    return tags


def run_job(job: JobSpec, plan: DataPlan | None = None, resume_run_id: str | None = None) -> JobResult:
    """Run `job`; with `resume_run_id`, continue that run from its last checkpoint instead."""
    prepare_environment()
    plan = plan or plan_data(job)  # DataError here: nothing created in MLflow yet
    if job.kind == "sweep":
        from orchestrator.sweep import run_sweep

        return run_sweep(job, plan)
    session = runtime = early = None
    if job.kind == "federated" and job.federated.engine == "simulation":
        from orchestrator.runtime import start_simulation_runtime

        runtime = start_simulation_runtime()  # Ray starts while MLflow opens the run
    if job.kind == "ray":
        from orchestrator import ray_job

        early = ray_job.start_local(job)  # a local runtime starts while MLflow is imported
        if early is None:
            session = ray_job.connect(job)  # unreachable cluster, impossible placement: exit 2, no run
    try:
        if job.tracking.enabled:
            from orchestrator.tracking import Tracker

        from orchestrator.transfer import resolve

        if early is not None:  # MLflow was imported meanwhile; the store is opened once placed
            session = ray_job.connect(job, early)  # impossible placement: exit 2, nothing written
        if job.tracking.enabled:
            tracker = Tracker(job.tracking.uri, job.tracking.experiment)
        else:
            from orchestrator.memory_tracking import MemoryTracker

            tracker = MemoryTracker()
        start = resolve(job, tracker.uri)  # a wrong model.init_from: exit 2, no run
        return _tracked(job, plan, tracker, session, resume_run_id, start, runtime)
    finally:
        if session is not None:
            ray_job.disconnect(session)
        for started in (runtime, early):
            if started is not None:
                started.stop()  # Flower and disconnect() shut their runtime down; this covers early exits


def _tracked(job: JobSpec, plan: DataPlan, tracker, session, resume_run_id: str | None, start=None,
             runtime=None) -> JobResult:
    t0 = time.perf_counter()
    tags = run_tags(job, plan)
    if start is not None:
        tags.update(start.tags)
    opened = tracker.reopen(resume_run_id) if resume_run_id else tracker.run(run_name(job, plan), tags)
    with opened as run:
        params = flatten(job.model_dump(mode="json"))
        params.update(plan.notes)
        if job.kind == "federated":
            params["federated.num_clients"] = len(plan.hospitals)
            params["federated.hospital_sizes"] = ",".join(map(str, plan.hospital_sizes))
        if not resume_run_id:
            run.log_params(params)
            run.log_text(dump_yaml(job), "config/resolved.yaml")
        if job.tracking.enabled and job.kind == "ray":
            _warm_up_reporting(job)
        if job.kind == "ray":
            from orchestrator.ray_job import run_ray

            outcome = run_ray(job, plan, run, session, start)
        elif job.kind == "federated":
            from orchestrator.federated_job import run_federated

            outcome = run_federated(job, plan, run, start, runtime, resume=bool(resume_run_id))
        else:
            from orchestrator.centralized_job import run_centralized

            outcome = run_centralized(job, plan, run, start)
        wall = time.perf_counter() - t0
        run.log_metrics({"time/wall_s": wall, "time/first_round_s": outcome.first_round_s or 0.0}, 0)
        result = JobResult(run.run_id, run.experiment, run.experiment_id, tracker.uri,
                           final=dict(outcome.final), wall_s=wall,
                           first_round_at=getattr(outcome, "first_round_at", None),
                           round_ends_s=[v for _, v in sorted(run.history(["time/round_end_s"])["time/round_end_s"])]
                           if job.kind == "federated" else [])
        if not job.tracking.enabled:
            return result  # nothing to report into
        from orchestrator.tracking import RETRY_S

        run.flush(wait=RETRY_S)  # every metric is in the store before the report reads them back
        from orchestrator.report import log_report

        log_report(run, job, plan, outcome)
        from orchestrator.explain import explain_run

        explain_run(run, job, plan, outcome.model)
        if job.tracking.log_model:
            example = _input_example(plan)
            t_model = time.perf_counter()
            record = run.log_model(outcome.model, example, job.tracking.register_model)
            run.log_metrics({"time/log_model_s": time.perf_counter() - t_model}, 0)
            run.flush()
            result.model_uri, result.registered = record.model_uri, record.registry_uri
            if record.registry_uri:
                run.set_tags({"registered_model": record.registry_uri})
    return result


def _warm_up_reporting(job: JobSpec) -> None:
    """Import what the report and the model export need while the driver of a Ray Train job only
    waits on its workers: matplotlib, and the torch.export tracer behind MLflow's pt2 model format
    (~1.5 s, torch._dynamo). Not in a federated job: its driver relays every message of every
    round, and an import holding the GIL slowed those rounds by as much as it saved at the end.
    A centralized job imports the tracer with its first optimizer step anyway."""
    import threading

    def warm() -> None:
        try:
            from orchestrator import plots  # noqa: F401

            if job.tracking.log_model:
                import torch.export._trace  # noqa: F401
        except Exception:  # noqa: BLE001 - only a head start: the real import reports any problem
            pass

    threading.Thread(target=warm, name="consortium-warm-up", daemon=True).start()


def _input_example(plan: DataPlan) -> np.ndarray:
    split = plan.central or plan.centralized
    if split is not None:
        return np.asarray(split.X_test[:5], dtype=np.float32)
    return np.zeros((5, plan.num_features), dtype=np.float32)
