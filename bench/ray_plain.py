"""A plain Ray Train script: the contender `consortium run configs/cluster_ddp.yaml` is held to.

    python bench/ray_plain.py WORKERS EPOCHS

What a user would write by hand for the same training: scikit-learn's 8x8 digits (80/20 split,
standardised), the same CNN (conv 16, conv 32, 3x3 with 2x2 pooling, a linear head), Adam 0.003,
global batch 64 split over the workers, DDP through `ray.train.torch.prepare_model`, each worker
on every world-th row of an epoch's permutation, rank 0 scoring the test split after every epoch
and reporting it. Ray Train's report drain is tuned (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1`, as
Consortium sets it); no MLflow. Prints one JSON line: when each epoch ended, steady epoch time, accuracy.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time


def train_loop(config: dict) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    mean, std = X_tr.mean(0), np.where(X_tr.std(0) > 1e-8, X_tr.std(0), 1.0)
    X_tr = torch.tensor((X_tr - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)
    X_te = torch.tensor((X_te - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)
    torch.manual_seed(42)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    loss_fn = nn.CrossEntropyLoss()
    batch = max(1, 64 // world)
    for epoch in range(config["epochs"]):
        t = time.perf_counter()
        perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(epoch))
        mine = perm[rank::world]
        model.train()
        for i in range(0, len(mine), batch):
            idx = mine[i:i + batch]
            opt.zero_grad()
            loss_fn(model(X_tr[idx]), y_tr[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(X_te).argmax(1) == y_te).float().mean())
        row = {"epoch": epoch + 1, "accuracy": acc, "epoch_s": time.perf_counter() - t, "at": time.time()}
        ray.train.report(row)
        if rank == 0:  # Ray Train 2 keeps no metrics table of its own: the epochs, for this bench
            with open(config["log"], "a") as f:
                f.write(json.dumps(row) + "\n")


def main(workers: int, epochs: int) -> dict:
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    storage = tempfile.mkdtemp(prefix="bench-ray-plain-")
    log = os.path.join(storage, "epochs.jsonl")
    trainer = TorchTrainer(train_loop, train_loop_config={"epochs": epochs, "log": log},
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(storage_path=storage, name="plain"))
    trainer.fit()
    ray.shutdown()
    with open(log) as f:
        history = [json.loads(line) for line in f]
    epoch_s = [r["epoch_s"] for r in history]
    return {"first_epoch_at": history[0]["at"], "steady_epoch_s": statistics.median(epoch_s[1:] or epoch_s),
            "accuracy": history[-1]["accuracy"]}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
