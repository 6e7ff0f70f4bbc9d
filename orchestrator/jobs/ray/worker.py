"""The Ray Train worker: the shared training loop as one DDP rank.

Every worker reads the data itself and trains on its DistributedSampler-style shard; loss and
accuracy are summed over all workers (not rank 0's shard), and only rank 0 writes to MLflow, into
the one run the driver opened. Checkpoints every N epochs let Ray Train restart a failed group.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from orchestrator.spec.job import JobSpec


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

    from orchestrator.jobs.plan import plan_data
    from orchestrator.core.training import (
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
    from orchestrator.jobs.transfer import Start, initial_model

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
    counts = None if plan.task != "classification" else np.bincount(y_np, minlength=plan.num_classes)
    objective = Objective.of(job, plan.num_classes, class_weights(job.train, counts), model, plan.schema.classes)
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
    if rank == 0 and config.get("inbox"):
        from orchestrator.jobs.ray.inbox import Outbox

        run = Outbox(config["inbox"])   # the driver logs what rank 0 reports (`inbox`)
        run.set_tags({"ray.worker_nodes": ",".join(nodes), "ray.num_nodes": len(set(nodes))})
        if start_epoch > 1:
            run.log_metrics({"ray/resumed_from_epoch": start_epoch - 1}, step=start_epoch - 1)
    try:   # the connection to the driver ends with the loop, also when the loop fails
        for epoch in range(start_epoch, job.train.epochs + 1):
            torch.manual_seed(job.seed * 1000 + epoch * 10 + rank)  # dropout masks
            lr = set_lr(opt, job.train.optimizer.lr, lr_factor(job.train.schedule, epoch - 1, job.train.epochs))
            t0 = time.perf_counter()
            batches = [b.to(device) for b in _shard_batches(len(y), per_worker_batch, job.seed, epoch, rank, world)]
            augment = None
            if job.train.augment.enabled:   # seeded per worker and epoch: a run repeats
                from orchestrator.core.augment import Augment

                augment = Augment(job.train.augment, X.shape[1], job.seed * 1000 + epoch * 10 + rank + 7)
            loss_sum, seen = train_epoch(model, opt, objective, X, y, batches, amp, grad_clip=job.train.grad_clip,
                                         augment=augment)
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
                ckpt = _save_checkpoint(module, opt, epoch, history)
            ray.train.report(metrics, checkpoint=ckpt)
            if stop:  # the same decision on every worker: each evaluated the same rows with the same weights
                break
    finally:
        if run is not None:
            run.close()
