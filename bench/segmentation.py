"""Segmentation side by side: the consortium against a plain MONAI loop on the same data, and the
consortium's inner loops against the plain calls they wrap.

1. Dice: the shipped two-hospital export (configs/data/segmentation_hospitals), read by the
   consortium's readers into the pooled train/test split of `kind: centralized`. A plain MONAI loop
   (the same U-Net, DiceCELoss, Adam, RandCropByPosNegLabel patches as MONAI's tutorials draw them,
   sliding_window_inference and DiceMetric on the test images) trains --epochs epochs; the consortium
   trains the same job pooled (`kind: centralized`) and federated (the shipped config: 2 hospitals,
   rounds x local epochs = the same epochs). The floor the integration test states is what the plain
   loop reaches, less a margin for seeds.
2. Training throughput (patches/s): `train_epochs` (the consortium's loop: seeded batches, patches
   drawn per batch) against a plain torch loop over the same patches cut beforehand. Target >= 0.9x.
3. Sliding-window inference of a 3D volume: the consortium's network in evaluation (which slides
   the windows itself) against MONAI's `sliding_window_inference` called directly on the same
   network and volume. Target >= 0.95x.

    python -m bench.segmentation [--epochs 16] [--out bench/results/segmentation.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "images_segmentation.yaml"


def job(**over):
    from orchestrator.spec.loading import load_job

    return load_job(CONFIG, [f"data.path={ROOT / 'configs' / 'data' / 'segmentation_hospitals'}",
                             *(f"{k}={v}" for k, v in over.items())])


def pooled_split():
    from orchestrator.jobs.plan import plan_data

    plan = plan_data(job(kind="centralized"))
    return plan.centralized, plan.schema


def plain_monai(split, k: int, epochs: int, seed: int = 42) -> dict:
    """MONAI as its tutorials use it: its U-Net, RandCropByPosNegLabeld patches, DiceCELoss, Adam,
    sliding_window_inference and DiceMetric (background excluded, empty truths ignored)."""
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.nets import UNet
    from monai.transforms import RandCropByPosNegLabel

    torch.manual_seed(seed)
    side = int(round(np.sqrt(split.X_train.shape[1])))
    X = torch.as_tensor(np.asarray(split.X_train)).reshape(-1, 1, side, side)
    Y = torch.as_tensor(np.asarray(split.y_train)).reshape(-1, 1, side, side)
    mean, std = X.mean(), X.std()
    # the same network as the consortium's (GroupNorm needs the top level's 16 channels: a 1x1 head after)
    net = torch.nn.Sequential(UNet(2, 1, 16, channels=(16, 32, 64), strides=(2, 2), num_res_units=1,
                                   norm=("group", {"num_groups": 8})), torch.nn.ReLU(), torch.nn.Conv2d(16, k, 1))
    loss_fn, opt = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(net.parameters(), lr=0.005)
    crop = RandCropByPosNegLabel(spatial_size=(32, 32), pos=1, neg=1, num_samples=1)
    crop.set_random_state(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(X)).split(16):
            xs, ys = [], []
            for i in idx:
                crop.randomize(label=Y[i])
                xs.append(crop(X[i], label=Y[i], randomize=False)[0])
                ys.append(crop(Y[i], label=Y[i], randomize=False)[0])
            xb, yb = torch.stack([torch.as_tensor(x) for x in xs]), torch.stack([torch.as_tensor(y) for y in ys])
            opt.zero_grad()
            loss_fn(net((xb - mean) / std), yb).backward()
            opt.step()
    train_s = time.perf_counter() - t0
    net.eval()
    Xt = torch.as_tensor(np.asarray(split.X_test)).reshape(-1, 1, side, side)
    Yt = torch.as_tensor(np.asarray(split.y_test)).reshape(-1, 1, side, side)
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    with torch.no_grad():
        out = sliding_window_inference((Xt - mean) / std, (32, 32), 4, net, overlap=0.5, mode="gaussian")
    onehot = lambda a: torch.nn.functional.one_hot(a[:, 0], k).movedim(-1, 1)  # noqa: E731
    metric(onehot(out.argmax(1, keepdim=True)), onehot(Yt))
    per_class = metric.aggregate()
    return {"dice": float(per_class.nanmean()), "dice_per_label": [float(v) for v in per_class], "train_s": train_s}


def consortium(kind: str, epochs: int) -> dict:
    from orchestrator.jobs.runner import run_job

    over = {"kind": kind, "tracking.enabled": "false"}
    over.update({"train.epochs": epochs} if kind == "centralized" else {"federated.rounds": epochs // 2})
    t0 = time.perf_counter()
    result = run_job(job(**over))
    final = result.final if hasattr(result, "final") else result["final"]
    return {"dice": float(final["eval/dice"]), "wall_s": time.perf_counter() - t0}


def throughput(split, k: int, repeats: int = 5) -> dict:
    """patches/s: train_epochs (patches drawn per batch) vs a plain loop over patches cut beforehand."""
    from orchestrator.core.models import build_model
    from orchestrator.core.segmentation import Patches
    from orchestrator.core.training import Objective, train_epochs

    j = job(kind="centralized", **{"train.epochs": 1})
    X, y = torch.as_tensor(np.asarray(split.X_train)), torch.as_tensor(np.asarray(split.y_train))
    side = int(round(np.sqrt(X.shape[1])))

    def ours() -> float:
        model = build_model(j.model, X.shape[1], k)
        t0 = time.perf_counter()
        train_epochs(model, X, y, j.train, 1, 0, objective=Objective.of(j, k, None, model))
        return len(X) / (time.perf_counter() - t0)

    def plain() -> float:
        model = build_model(j.model, X.shape[1], k)
        xb, yb = Patches(32, side, 1, 2, seed=0)(X, y)   # the same patches, cut before the clock starts
        loss_fn = Objective.of(j, k, None, model)
        opt = torch.optim.Adam(model.parameters(), lr=0.005)
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(len(xb)).split(j.train.batch_size):
            opt.zero_grad()
            loss_fn(model.logits(xb[idx]), yb[idx]).backward()
            opt.step()
        return len(xb) / (time.perf_counter() - t0)

    ours(), plain()   # warm up
    o, p = [], []
    for _ in range(repeats):   # interleaved, so drift on a shared machine hits both alike
        o.append(ours())
        p.append(plain())
    return {"ours_patches_per_s": statistics.median(o), "plain_patches_per_s": statistics.median(p),
            "ratio": statistics.median(o) / statistics.median(p), "target": 0.9}


def sliding_3d(repeats: int = 5) -> dict:
    from monai.inferers import sliding_window_inference

    from orchestrator.core.models import build_model
    from orchestrator.core.segmentation import OVERLAP, WINDOW_BATCH
    from orchestrator.spec.model import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec.model_validate({"name": "unet", "spatial_dims": 3, "channels": [8, 16, 32], "patch_size": 32})
    model = build_model(spec, 64**3, 3).eval()
    volume = torch.rand(1, 64**3)
    shaped = volume.reshape(1, 1, 64, 64, 64)

    def ours() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model(volume)
        return time.perf_counter() - t0

    def direct() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(shaped, (32, 32, 32), WINDOW_BATCH, model.logits, overlap=OVERLAP, mode="gaussian")
        return time.perf_counter() - t0

    ours(), direct()
    o, d = [], []
    for _ in range(repeats):
        o.append(ours())
        d.append(direct())
    return {"volume": [64, 64, 64], "window": [32, 32, 32], "overlap": OVERLAP, "ours_s": statistics.median(o),
            "monai_direct_s": statistics.median(d), "ratio": statistics.median(d) / statistics.median(o), "target": 0.95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "segmentation.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    split, schema = pooled_split()
    k = len(schema.classes)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "date": time.strftime("%Y-%m-%d"),
        "data": "configs/data/segmentation_hospitals (2 hospitals, 300 cases, 40 x 40, labels 0/1/2)",
        "plain_monai": plain_monai(split, k, args.epochs),
        "consortium_centralized": consortium("centralized", args.epochs),
        "consortium_federated": consortium("federated", args.epochs),
        "throughput": throughput(split, k),
        "sliding_window_3d": sliding_3d(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
