"""kind: ray. Cluster training: data-parallel PyTorch (DDP) on Ray Train workers.

The only modules that import ray.train are this package's. The driver (here) places the job
(`session`), fits a TorchTrainer running `worker.train_loop_per_worker`, and loads the last
checkpoint's model; `consortium resume RUN_ID` continues a stopped job from Ray Train's checkpoints.
"""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import torch

from orchestrator.jobs import progress
from orchestrator.jobs.base import Context, Description, JobKind, Launched, Outcome
from orchestrator.jobs.ray.inbox import Inbox
from orchestrator.jobs.ray.session import RaySession, connect, disconnect, start_local, storage_root, worker_resources
from orchestrator.jobs.ray.worker import train_loop_per_worker
from orchestrator.spec.job import JobSpec


def run_ray(job: JobSpec, plan, run, session: RaySession, start=None, resume: bool = False) -> Outcome:
    """Fit with Ray Train. Its storage folder is named here, not after the MLflow run (whose id the
    tracking process may still be making while the workers start); the run's `ray.storage` tag
    records it, and a resumed run fits into that folder again (Ray Train continues from its last
    checkpoint there)."""
    import ray.train
    import ray.util
    from ray.train.torch import TorchTrainer

    from orchestrator.core.models import build_model

    storage = storage_root()
    storage.mkdir(parents=True, exist_ok=True)
    name = (Path(run.tag("ray.storage") or run.run_id).name if resume
            else f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}")
    run.set_tags({"ray.storage": str(storage / name), "ray.address": session.address or "local",
                  "ray.cluster_cpus": session.resources.get("CPU", 0), "ray.cluster_gpus": session.resources.get("GPU", 0)})
    t0 = time.perf_counter()
    inbox = Inbox(run, job.train.epochs, ray.util.get_node_ip_address())   # rank 0 reports here, the driver logs
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": _for_workers(job).model_dump_json(), "inbox": inbox.for_workers(),
                           "init_weights": start.weights if start is not None else None},
        scaling_config=ray.train.ScalingConfig(num_workers=job.ray.num_workers, use_gpu=job.ray.use_gpu,
                                               resources_per_worker=worker_resources(job)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=job.ray.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.checkpoint.keep),
        ),
    )
    progress.begin("epoch", job.train.epochs, f"{job.name}: {job.model.name}, {job.ray.num_workers} Ray Train workers")
    try:
        result = trainer.fit()
    except BaseException:
        inbox.close(timeout=0)   # stopped (Ctrl-C, SIGTERM): the workers may still be training
        raise
    inbox.close()
    if result.error is not None:
        raise result.error
    state = None
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    model = build_model(job.model, plan.num_features, plan.num_classes)
    model.load_state_dict(state["model"])
    if start is not None and start.weights is not None:
        run.log_params({"transfer.copied": sum(1 for k in start.weights if k in state["model"])})
    last = state["history"][str(state["epoch"])]
    outcome = Outcome(model=model, final=dict(last))
    first = state["history"].get("1")
    if first is not None:
        outcome.first_round_s = first.get("time/epoch_s")
    run.log_metrics({"time/fit_s": time.perf_counter() - t0}, step=0)
    return outcome


class RayLaunched(Launched):
    """A local runtime starts in the background while MLflow is imported; a cluster is joined now
    (unreachable, impossible placement: exit 2 before any run)."""

    def __init__(self, job: JobSpec):
        self.job = job
        self.early = start_local(job)
        self.session: RaySession | None = None if self.early is not None else connect(job)
        self._stopping: threading.Thread | None = None

    def join(self) -> None:
        if self.session is None:
            self.session = connect(self.job, self.early)

    def stop_soon(self) -> None:
        """The model is out of Ray Train's checkpoint: nothing else needs Ray, whose shutdown (~1 s
        on 2 cores) now overlaps the report and the model's export."""
        if self._stopping is None:
            self._stopping = threading.Thread(target=self._stop, name="consortium-ray-shutdown", daemon=True)
            self._stopping.start()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.join()
        else:
            self._stop()

    def _stop(self) -> None:
        if self.session is not None:
            disconnect(self.session)
        if self.early is not None:
            self.early.stop()   # disconnect() shut the runtime down; this covers early exits


class RayJob(JobKind):
    name = "ray"

    def describe(self, job: JobSpec, plan) -> Description:
        data = job.data.path or job.data.source
        gpu = " with GPUs" if job.ray.use_gpu else ""
        return Description(f"{job.name}-ray-{job.ray.num_workers}w{'-gpu' if job.ray.use_gpu else ''}",
                           f"Data-parallel (DDP) training on {job.ray.num_workers} Ray Train worker(s){gpu}, "
                           f"{job.train.epochs} epochs: {job.model.name} on {data}.")

    def launch(self, job: JobSpec) -> RayLaunched:
        return RayLaunched(job)

    def run(self, ctx: Context) -> Outcome:
        if ctx.job.tracking.enabled:
            # a run that logs its model later exports it in its tracking process, not here
            _warm_up_reporting(ctx.job, export=ctx.run.exports_here)
        outcome = run_ray(ctx.job, ctx.plan, ctx.run, ctx.launched.session, ctx.start, ctx.resume)
        ctx.launched.stop_soon()
        return outcome


def _warm_up_reporting(job: JobSpec, export: bool) -> None:
    """Import what the report and the model export need while the driver of a Ray Train job only
    waits on its workers: matplotlib, and the torch.export tracer behind MLflow's pt2 model format
    (~1.5 s, torch._dynamo). Not in a federated job: its driver relays every message of every
    round, and an import holding the GIL slowed those rounds by as much as it saved at the end."""
    import threading

    def warm() -> None:
        try:
            from orchestrator.tracking import plots  # noqa: F401

            if export and job.tracking.log_model:
                from orchestrator.adapters.torch import warm_export

                warm_export()
        except Exception:  # noqa: BLE001 - only a head start: the real import reports any problem
            pass

    threading.Thread(target=warm, name="consortium-warm-up", daemon=True).start()


KIND = RayJob()


def _for_workers(job):
    """The job as the workers read it: a relative data.path resolved here (a worker's directory is
    Ray's, not the one the job was started from)."""
    if not job.data.path or Path(job.data.path).is_absolute():
        return job
    return job.model_copy(update={"data": job.data.model_copy(update={"path": str(Path(job.data.path).resolve())})})
