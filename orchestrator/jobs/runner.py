"""One job, start to end, whatever its kind: check the data, open the MLflow run, let the kind
train, then report, log and register the model. Kinds live in their own modules (`jobs.base`)."""
from __future__ import annotations

import time

import numpy as np

from orchestrator.jobs import capture
from orchestrator.jobs.base import Context, JobKind, Launched
from orchestrator.jobs.kinds import kind_of
from orchestrator.jobs.lifecycle import Attach, NewRun, Request, Resume, RunResult, Trial
from orchestrator.core.dataplan import DataPlan
from orchestrator.jobs.plan import plan_data
from orchestrator.jobs.runtime import git_commit, prepare_environment
from orchestrator.spec.job import JobSpec
from orchestrator.spec.loading import dump_yaml, flatten
from orchestrator.tracking.protocol import Run, Tracker


def run_job(job: JobSpec, request: NewRun | Resume | None = None, plan: DataPlan | None = None) -> RunResult:
    """Run `job` as `request` asks (`jobs.lifecycle`): a new run by default, or `Resume(run_id)`, which
    continues that run from its last checkpoint."""
    prepare_environment()
    kind = kind_of(job.kind)
    from orchestrator.tracking import remote

    tracker = remote.for_job(job)   # MLflow in a process of its own, imported while this one reads the data
    launched = None
    try:
        plan = plan or plan_data(job)  # DataError here: nothing created in MLflow yet
        kind.check(job, plan)
        launched = kind.launch(job)    # e.g. Ray starts while MLflow is imported
        if job.tracking.enabled and tracker is None:
            import orchestrator.tracking.store  # noqa: F401 - MLflow's import overlaps the runtime's start
        from orchestrator.jobs.transfer import resolve

        launched.join()            # e.g. an impossible placement: exit 2, nothing written yet
        if tracker is not None:
            tracker.open()         # the store opens (a new one: its schema is made) while the job trains
        tracker = tracker or open_tracker(job)
        start = resolve(job, tracker.uri)  # a wrong model.init_from: exit 2, no run
        return execute(job, plan, tracker, request or NewRun(), kind=kind, launched=launched, start=start)
    finally:
        if launched is not None:
            launched.stop()
        if tracker is not None:
            tracker.close()


def open_tracker(job: JobSpec):
    """The job's tracker in this process (`tracking.remote` is the one in a process of its own)."""
    if not job.tracking.enabled:
        from orchestrator.tracking.memory import MemoryTracker

        return MemoryTracker()
    from orchestrator.tracking.store import Tracker

    return Tracker(job.tracking.uri, job.tracking.experiment)


def execute(job: JobSpec, plan: DataPlan, tracker: Tracker, request: Request, *, kind: JobKind | None = None,
            launched: Launched | None = None, start=None) -> RunResult:
    """The run's lifecycle around `kind.run`, as `request` asks (`jobs.lifecycle`: a new run, a
    resumed one, a sweep's trial, or a deployed job's run another process opened). `start`: where
    the model starts (`jobs.transfer.resolve`)."""
    trial = request if isinstance(request, Trial) else None
    resume_run_id = request.run_id if isinstance(request, Resume) else None
    attach_run_id = request.run_id if isinstance(request, Attach) else None
    listeners = list(request.listeners) if isinstance(request, NewRun) else []
    kind = kind or kind_of(job.kind)
    t0 = time.perf_counter()
    about = kind.describe(job, plan)
    all_tags = {"kind": job.kind, "dataset": job.data.path or job.data.source, "job": job.name,
                "git_commit": git_commit(), "model": job.model.name, "mlflow.note.content": about.text,
                **about.tags, **(trial.parent_tags if trial else {})}
    if start is not None:
        all_tags.update(start.tags)
    existing = resume_run_id or attach_run_id
    opened = tracker.reopen(existing) if existing else tracker.run(about.run_name, all_tags)
    with opened as run:
        try:
            if attach_run_id:
                run.set_tags({**all_tags, "mlflow.runName": f"{about.run_name}-{attach_run_id[:6]}"})
            if kind.logs_here and not (resume_run_id or attach_run_id):
                run.keep_history()
            if not resume_run_id:
                run.log_params({**flatten(job.model_dump(mode="json")), **plan.notes, **about.params,
                                **(trial.params if trial else {})})
                run.log_text(dump_yaml(job), "config/resolved.yaml")
            epoch_hook = None if trial is None else (lambda epoch, metrics: trial.on_epoch(run.run_id, epoch, metrics))
            ctx = Context(job, plan, run, tracker, launched or Launched(), start, bool(resume_run_id), epoch_hook,
                          listeners)
            outcome = kind.run(ctx)
            wall = time.perf_counter() - t0
            run.log_metrics({"time/wall_s": wall, "time/first_round_s": outcome.first_round_s or 0.0}, 0)
            record = None
            if job.tracking.enabled and outcome.model is not None:
                record = report_and_log_model(job, plan, run, outcome, report=trial is None, register=trial is None)
            # the run's id is read only now: a tracking process may have been opening the store till now
            result = RunResult(run.run_id, run.experiment, tracker.uri, experiment_id=run.experiment_id,
                               final=dict(outcome.final),
                               wall_s=wall, first_round_at=outcome.first_round_at,
                               model_uri=outcome.model_uri, registered=outcome.registered,
                               round_ends_s=[v for _, v in sorted(run.history(["time/round_end_s"])["time/round_end_s"])]
                               if job.by_hospital else [], crossval=outcome.crossval,
                               previous_run=run.previous_run)
            if not job.tracking.enabled:  # the in-memory run is all there is: keep its history
                result.history = run.history([k for k in run.metric_keys() if not k.startswith(("hospital_", "time/"))])
            if record is not None:
                result.model_uri, result.registered = record.model_uri, record.registry_uri
        finally:
            capture.log_into(run)   # what MLflow, Flower and Ray said, kept in the run
    return result


def report_and_log_model(job: JobSpec, plan: DataPlan, run: Run, outcome, report: bool, register: bool):
    """The figures, the explanations and the model of a tracked run; the model's record, or None.
    A run whose writes go to a tracking process exports the model there while this one draws."""
    if not run.answers_here:
        from orchestrator.tracking.stores import RETRY_S

        run.flush(wait=RETRY_S)  # every metric is in the store before the report reads them back
    logging_model = None
    if job.tracking.log_model:
        args = (outcome.model, input_example(plan), job.tracking.register_model if register else None,
                model_card(plan, job, outcome.model))
        if not run.exports_here:   # exported elsewhere while this process draws the report
            logging_model = run.log_model_later(*args)
    if report:
        from orchestrator.tracking.explain import explain_run
        from orchestrator.tracking.report import log_report

        log_report(run, job, plan, outcome)
        explain_run(run, job, plan, outcome.model)
        if plan.task == "segmentation":   # what the network segments: a few held-out images, truth and prediction
            from orchestrator.tracking.plots import log_segmentation_overlays

            log_segmentation_overlays(run, job, plan, outcome.model)
        elif job.explain.integrated_gradients:
            from orchestrator.tracking.attributions import explain_attributions

            explain_attributions(run, job, plan, outcome.model, outcome.attributions)
    if not job.tracking.log_model:
        return None
    t_model = time.perf_counter()   # time/log_model_s: what the job spent on its model, waiting included
    record = run.log_model(*args) if logging_model is None else logging_model.result()
    run.log_metrics({"time/log_model_s": time.perf_counter() - t_model}, 0)
    run.flush()
    if record.registry_uri:
        run.set_tags({"registered_model": record.registry_uri})
    return record


def model_card(plan: DataPlan, job: JobSpec, model) -> dict:
    """What the logged model's python_function flavor needs: the columns, the labels, the head and
    the value a missing cell takes (the consortium's mean, which the model's scaling centres on)."""
    from orchestrator.core.models import standardizer
    from orchestrator.tracking.flavor import card

    out = card(plan.schema.features, plan.schema.classes, job.model.head,
               standardizer(model).mean.detach().cpu().numpy(), plan.schema.columns, plan.schema.categories)
    if job.data.source == "images":   # `consortium predict MODEL FOLDER` reads files as training did
        spec = job.data
        out["image"] = {"size": spec.image_size, "channels": spec.channels, "fit": spec.fit,
                        "window": list(spec.window) if spec.window else None,
                        "spacing": list(spec.spacing) if spec.spacing else None, "dims": job.model.spatial_dims}
    if job.model.head == "multilabel":   # how a prediction lists its findings, as the manifests did
        out.update(label_separator=job.data.label_separator, no_finding=job.data.no_finding)
    if job.model.head == "segmentation":   # a predicted mask holds the masks' own label values
        out.update(values=list(plan.schema.values), mask_pattern=job.data.mask_pattern)
    return out


def input_example(plan: DataPlan) -> np.ndarray:
    split = plan.central or plan.centralized
    if split is not None:
        return np.asarray(split.X_test[:5], dtype=np.float32)
    return np.zeros((5, plan.num_features), dtype=np.float32)
