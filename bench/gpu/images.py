"""An image network on one device, side by side: Consortium's training step (core.training's
train_epoch, the one every engine runs, with `train.augment` off) vs a plain PyTorch loop over the
same tensors, model (MONAI's ResNet-18 as `model.name: resnet18` builds it) and batch size; fp32 and
bf16 autocast. Images per second, the ratio, and peak GPU memory. Interleaved repeats.

    python bench/gpu/images.py [--size 224] [--batch 64] [--steps 30] [--out results.json]
    python bench/gpu/images.py --model unet --dims 3 --size 64 --batch 8   # a 3D U-Net, patches/s

`--model unet` (or segresnet): a segmentation network on masks of three labels, the shared step with
MONAI's Dice + cross-entropy vs a plain loop calling MONAI's DiceCELoss on the network's logits.

Runs anywhere: without CUDA it runs on the CPU (tiny sizes in the suite keep it from rotting), and
the JSON says which device ran. The images are random tensors: decoding is bench/images.py's part.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


SEGMENTERS = ("unet", "segresnet")


def _model(name: str, size: int, channels: int, classes: int, dims: int = 2):
    from orchestrator.core.models import build_model
    from orchestrator.spec.model import ModelSpec

    spec = {"name": name, "spatial_dims": dims, **({"channels": [16, 32, 64]} if name == "unet" else {})}
    return build_model(ModelSpec.model_validate(spec), channels * size**dims, classes)


def measure(name: str, size: int, batch: int, steps: int, bf16: bool, ours: bool, device, dims: int = 2) -> dict:
    import torch

    from orchestrator.core.training import Objective, train_epoch

    torch.manual_seed(0)
    segmenting = name in SEGMENTERS
    classes, channels = (3, 1) if segmenting else (2, 3)
    X = torch.rand(batch * steps, channels * size**dims, device=device)
    y = torch.randint(0, classes, (batch * steps, *((size**dims,) if segmenting else ())), device=device)
    model = _model(name, size, channels, classes, dims).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = list(torch.arange(len(y), device=device).split(batch))
    dtype = torch.bfloat16 if bf16 else None
    objective = Objective("segmentation", "dice_ce", classes) if segmenting else \
        Objective("softmax", "cross_entropy", classes)
    loss_fn = torch.nn.CrossEntropyLoss()
    if segmenting:   # the plain loop: MONAI's loss on the network's logits, the masks shaped by hand
        from monai.losses import DiceCELoss

        dice = DiceCELoss(to_onehot_y=True, softmax=True)

        def loss_fn(out, target):   # noqa: F811 - the plain loop's loss for a segmentation
            return dice(out.float(), target.reshape(out.shape[0], 1, *out.shape[2:]))

    def one_pass() -> None:
        if ours:
            train_epoch(model, opt, objective, X, y, batches, dtype)
            return
        model.train()
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            if dtype is not None:
                with torch.autocast(device_type=device.type, dtype=dtype):
                    loss = loss_fn(model(X[idx]), y[idx])
            else:
                loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()

    one_pass()   # warm-up: cuDNN autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    one_pass()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"images_per_s": len(y) / wall, "peak_gpu_mib": peak}   # a segmentation's: patches (whole volumes)/s


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dims", type=int, default=2, choices=(2, 3))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "model": args.model, "image_size": args.size, "dims": args.dims, "batch": args.batch,
                    "steps": args.steps}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and device.type == "cpu":
            continue   # CPU autocast is not what a hospital's GPU runs
        runs: dict[str, list] = {"consortium": [], "plain": []}
        for _ in range(args.repeats):
            for who in ("consortium", "plain"):   # interleaved: the machine's noise hits both
                runs[who].append(measure(args.model, args.size, args.batch, args.steps, bf16, who == "consortium", device,
                                         args.dims))
        ours = statistics.median(r["images_per_s"] for r in runs["consortium"])
        plain = statistics.median(r["images_per_s"] for r in runs["plain"])
        result[precision] = {"consortium_images_per_s": round(ours, 1), "plain_images_per_s": round(plain, 1),
                             "ratio": round(ours / plain, 3),
                             "peak_gpu_mib": max((r["peak_gpu_mib"] or 0) for r in runs["consortium"]) or None}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
