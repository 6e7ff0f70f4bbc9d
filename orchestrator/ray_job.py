"""Cluster training: the shared training loop as data-parallel PyTorch (DDP) on Ray Train workers.

The only module that imports ray.train. Every worker reads the data itself and trains on its
DistributedSampler-style shard; loss and accuracy are summed over all workers (not rank 0's shard),
and only rank 0 writes to MLflow, into the one run the driver opened. Checkpoints every N epochs let
Ray Train restart a failed worker group, and `consortium resume RUN_ID` continue a stopped job.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orchestrator.config import JobSpec
from orchestrator.errors import UserError
from orchestrator.runtime import EarlyRuntime, consortium_home, ray_init_args, stop_on_sigterm

# Ray Train drains reports every 2 s by default: short epochs would each stall to 2 s.
_HEALTH_CHECK_S = "0.1"
# Set in the runtime env of a job sent by `consortium submit`: the job already carries our env.
SUBMITTED_ENV = "CONSORTIUM_SUBMITTED"


@dataclass
class RaySession:
    address: str | None
    started_local: bool
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class RayOutcome:
    model: torch.nn.Module
    final: dict[str, float] = field(default_factory=dict)
    first_round_s: float | None = None


def worker_env() -> dict[str, str]:
    keep = ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "CONSORTIUM_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", _HEALTH_CHECK_S)
    return env


def _reachable(address: str, timeout: float = 3.0) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _fresh_runtime() -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", _HEALTH_CHECK_S)
    if ray.is_initialized():
        # A runtime left by Flower or an earlier job: Flower shuts its runtime down at the end of
        # every simulation, so a Ray Train job always gets a runtime of its own.
        ray.shutdown()


def start_local(job: JobSpec) -> EarlyRuntime | None:
    """A job on a local runtime: start it in the background (~4 s) while the driver imports
    MLflow; `connect(job, early)` then waits for it. None for a cluster or a submitted job."""
    if job.ray.address is not None or os.environ.get(SUBMITTED_ENV) == "1":
        return None
    _fresh_runtime()
    return EarlyRuntime(ray_init_args(), env_vars=worker_env())


def connect(job: JobSpec, early: EarlyRuntime | None = None) -> RaySession:
    """Start or join the Ray runtime and check the job can be placed, before any run is created."""
    import ray

    spec = job.ray
    if early is None:
        _fresh_runtime()
    runtime_env = None if os.environ.get(SUBMITTED_ENV) == "1" else {"env_vars": worker_env()}
    if early is not None:
        early.join()  # started by start_local(); a failed start is raised here
    elif spec.address is None:
        ray.init(runtime_env=runtime_env, **ray_init_args())
    else:
        from ray._private import ray_constants

        # A cluster's nodes reach each other by routable address: undo the loopback-only default.
        ray_constants.ENABLE_RAY_CLUSTER = True
        if spec.address != "auto" and not _reachable(spec.address):
            raise UserError("ray.address", [f"nothing answers at {spec.address}: start a head with "
                                            f"`ray start --head --node-ip-address=127.0.0.1` or fix the address"])
        try:
            ray.init(address=spec.address, runtime_env=runtime_env, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError("ray.address", [f"cannot join the Ray cluster at {spec.address}: "
                                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]) from None
    session = RaySession(spec.address, started_local=spec.address is None)
    stop_on_sigterm()
    try:
        check_placement(job, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    except UserError:
        ray.shutdown()
        raise
    session.resources = dict(ray.cluster_resources())
    return session


def worker_resources(job: JobSpec) -> dict[str, float]:
    need = dict(job.ray.resources_per_worker)
    if job.ray.use_gpu:
        need.setdefault("GPU", 1.0)
    return need


def check_placement(job: JobSpec, nodes: list[dict[str, float]]) -> None:
    """Refuse, with a fix, what the cluster can never place (instead of waiting forever)."""
    spec, need = job.ray, worker_resources(job)
    total = {r: sum(n.get(r, 0.0) for n in nodes) for r in need}
    problems = []
    if spec.use_gpu and total.get("GPU", 0.0) == 0:
        problems.append("ray.use_gpu: true, but the cluster has no GPU: set ray.use_gpu=false")
    else:
        fits = 0
        for node in nodes:
            per = [int(node.get(r, 0.0) // q) for r, q in need.items() if q > 0]
            fits += min(per) if per else spec.num_workers
        if fits < spec.num_workers:
            have = ", ".join(f"{r}={total[r]:g}" for r in need)
            problems.append(f"ray.num_workers: {spec.num_workers} workers x {need} cannot be placed on this cluster "
                            f"({len(nodes)} node(s), {have}); at most {fits} fit: lower ray.num_workers or "
                            f"ray.resources_per_worker")
    if problems:
        raise UserError("ray", problems)


def disconnect(session: RaySession) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def storage_root() -> Path:
    return consortium_home() / "ray_results"


# --------------------------------------------------------------------------- the worker side
def _shard_batches(n: int, batch: int, seed: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    """Like DistributedSampler: one permutation per epoch, padded to a multiple of the world size,
    every rank takes every world-th row; equal batch counts keep DDP's collectives in step."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    total = -(-n // world) * world
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    mine = perm[rank::world]
    return [mine[i : i + batch] for i in range(0, len(mine), batch)]


def _save_checkpoint(module: torch.nn.Module, opt, epoch: int, history: dict):
    from ray.train import Checkpoint

    d = tempfile.mkdtemp(prefix="consortium-ckpt-")
    torch.save({"model": module.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "history": history},
               Path(d) / "state.pt")
    return Checkpoint.from_directory(d)


def train_loop_per_worker(config: dict) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from orchestrator.plan import plan_data
    from orchestrator.training import (
        EarlyStopping,
        Objective,
        class_weights,
        evaluate,
        lr_factor,
        make_optimizer,
        set_lr,
        tensors,
        train_epoch,
        validation_split,
    )
    from orchestrator.transfer import Start, initial_model

    job = JobSpec.model_validate_json(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.ray.resources_per_worker.get("CPU", 1))))
    plan = plan_data(job)  # each worker reads the data itself; nothing is shipped
    data = plan.centralized
    X_np, y_np = data.X_train, data.y_train
    stopper = val = None
    if job.train.early_stopping.enabled:  # every worker carves the same validation rows
        stopper = EarlyStopping(job.train.early_stopping)
        tr, va = validation_split(len(y_np), job.train.early_stopping.validation_fraction, job.seed)
        val = tuple(t.to(device) for t in tensors(X_np[va], y_np[va]))
        X_np, y_np = X_np[tr], y_np[tr]
    start = Start(config.get("init_weights"))
    model, _ = initial_model(job, plan.num_features, plan.num_classes, start, X_np, y_np)
    counts = None if plan.regression else np.bincount(y_np, minlength=plan.num_classes)
    objective = Objective.of(job, plan.num_classes, class_weights(job.train, counts), model)
    start_epoch, history = 1, {}
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        start_epoch, history = state["epoch"] + 1, state.get("history", {})
    model = ray.train.torch.prepare_model(model)  # moves to the device and wraps in DDP
    module = model.module if hasattr(model, "module") else model
    opt = make_optimizer(model.parameters(), job.train.optimizer)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    X, y = (t.to(device) for t in tensors(X_np, y_np))
    Xt, yt = (t.to(device) for t in tensors(data.X_test, data.y_test))
    per_worker_batch = max(1, job.train.batch_size // world)  # train.batch_size is the global batch
    amp = torch.bfloat16 if (job.ray.mixed_precision and device.type == "cuda") else None
    nodes = [ray.get_runtime_context().get_node_id()]
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, nodes[0])
        nodes = gathered
    run = None
    if rank == 0 and config.get("run_id"):
        from orchestrator.tracking import attach_run

        run = attach_run(config["tracking_uri"], config["run_id"])
        run.set_tags({"ray.worker_nodes": ",".join(nodes), "ray.num_nodes": len(set(nodes))})
        if start_epoch > 1:
            run.log_metrics({"ray/resumed_from_epoch": start_epoch - 1}, step=start_epoch - 1)
    for epoch in range(start_epoch, job.train.epochs + 1):
        torch.manual_seed(job.seed * 1000 + epoch * 10 + rank)  # dropout masks
        lr = set_lr(opt, job.train.optimizer.lr, lr_factor(job.train.schedule, epoch - 1, job.train.epochs))
        t0 = time.perf_counter()
        batches = [b.to(device) for b in _shard_batches(len(y), per_worker_batch, job.seed, epoch, rank, world)]
        loss_sum, seen = train_epoch(model, opt, objective, X, y, batches, amp, grad_clip=job.train.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_s = time.perf_counter() - t0
        sums = torch.tensor([loss_sum, seen], dtype=torch.float64, device=device)
        epoch_max = torch.tensor([epoch_s], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            dist.all_reduce(epoch_max, op=dist.ReduceOp.MAX)
        s = sums.tolist()
        slowest = float(epoch_max[0])
        # every worker holds the whole test split: evaluating it once on each is exact and cheap
        ev = {k: v for k, v in evaluate(module, Xt, yt, objective).items() if k != "num_examples"}
        metrics = {"epoch": epoch, "train/loss": s[0] / max(s[1], 1), "train/lr": lr, "time/epoch_s": slowest,
                   "perf/samples_per_s": s[1] / max(slowest, 1e-9), "ray/world_size": world}
        metrics.update({f"eval/{k}": v for k, v in ev.items()})
        stop = False
        if stopper is not None:
            vm = {f"val/{k}": v for k, v in evaluate(module, *val, objective).items() if k != "num_examples"}
            metrics.update(vm)
            stop = stopper.step(epoch, vm.get(job.train.early_stopping.metric, float("nan")), module)
        history[str(epoch)] = {k: v for k, v in metrics.items() if k != "epoch"}
        if run is not None:
            run.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
            run.flush()
        last = stop or epoch == job.train.epochs
        ckpt = None
        if rank == 0 and (epoch % job.checkpoint.every_epochs == 0 or last):
            best = None
            if last and stopper is not None and stopper.restore(module):
                best = stopper.summary()
                best["early_stopping/restored"] = 1.0
                best.update({f"eval/{k}": v for k, v in evaluate(module, Xt, yt, objective).items()
                             if k != "num_examples"})
                history[str(epoch)].update(best)
                if run is not None:
                    run.log_metrics(stopper.summary(), step=0)
                    run.flush()
            ckpt = _save_checkpoint(module, opt, epoch, history)
        ray.train.report(metrics, checkpoint=ckpt)
        if stop:  # the same decision on every worker: each evaluated the same rows with the same weights
            break


# --------------------------------------------------------------------------- the driver side
def run_ray(job: JobSpec, plan, run, session: RaySession, start=None) -> RayOutcome:
    """Fit with Ray Train; storage is named after the MLflow run so `resume` finds it again."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestrator.models import build_model

    storage = storage_root()
    storage.mkdir(parents=True, exist_ok=True)
    run.set_tags({"ray.storage": str(storage / run.run_id), "ray.address": session.address or "local",
                  "ray.cluster_cpus": session.resources.get("CPU", 0), "ray.cluster_gpus": session.resources.get("GPU", 0)})
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump_json(), "run_id": run.run_id, "tracking_uri": run.tracking_uri,
                           "init_weights": start.weights if start is not None else None},
        scaling_config=ray.train.ScalingConfig(num_workers=job.ray.num_workers, use_gpu=job.ray.use_gpu,
                                               resources_per_worker=worker_resources(job)),
        run_config=ray.train.RunConfig(
            name=run.run_id, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=job.ray.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.checkpoint.keep),
        ),
    )
    result = trainer.fit()
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
    outcome = RayOutcome(model=model, final=dict(last))
    first = state["history"].get("1")
    if first is not None:
        outcome.first_round_s = first.get("time/epoch_s")
    run.log_metrics({"time/fit_s": time.perf_counter() - t0}, step=0)
    return outcome
