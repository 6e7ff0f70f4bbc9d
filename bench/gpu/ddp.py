"""The GPU path, side by side on one GPU: the shared training loop in one process vs Ray Train's
DDP worker (`consortium run configs/cluster_ddp.yaml ray.use_gpu=true`), each in fp32 and in bf16
autocast (`ray.mixed_precision=true`). Interleaved repeats, each contender in a fresh process.

    python bench/gpu/ddp.py [--repeats 2] [--epochs 20] [--out results.json]

Runs anywhere: without CUDA the same contenders run on the CPU (to test this script), and the
JSON says which device ran. Tracking is off (MLflow is not on the GPU machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs/cluster_ddp.yaml"


def plain(epochs: int, bf16: bool, overrides: list[str]) -> dict:
    """The floor: the shared loop (core.training.train_epoch) on one device, no Ray."""
    import torch

    from orchestrator.core.models import build_model, mean_scale, moments, standardizer
    from orchestrator.core.training import Objective, evaluate, make_optimizer, shuffled_batches, tensors, train_epoch
    from orchestrator.jobs.plan import plan_data
    from orchestrator.spec.loading import load_job

    t0 = time.time()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    job = load_job(CONFIG, ["kind=centralized", f"train.epochs={epochs}", "tracking.enabled=false",
                            "tracking.register_model=null", *overrides])
    data = plan_data(job).centralized
    torch.manual_seed(job.seed)
    model = build_model(job.model, data.X_train.shape[1], 10)
    standardizer(model).set(*mean_scale(*moments(data.X_train)))
    model = model.to(dev)
    opt, loss_fn = make_optimizer(model.parameters(), job.train.optimizer), Objective.of(job, 10)
    X, y = (t.to(dev) for t in tensors(data.X_train, data.y_train))
    gen = torch.Generator().manual_seed(0)
    amp = torch.bfloat16 if bf16 and dev.type == "cuda" else None
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        batches = [b.to(dev) for b in shuffled_batches(len(y), job.train.batch_size, gen)]
        train_epoch(model, opt, loss_fn, X, y, batches, amp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    acc = evaluate(model, *(t.to(dev) for t in tensors(data.X_test, data.y_test)))["accuracy"]
    return {"device": str(dev), "steady_epoch_s": statistics.median(times[1:]), "wall_s": time.time() - t0,
            "accuracy": acc, "rows": len(y),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None}


def consortium(epochs: int, bf16: bool, overrides: list[str]) -> dict:
    """`consortium run` through the Python API: Ray Train, one worker, on the GPU when there is one."""
    import torch

    from orchestrator import run

    t0 = time.time()
    gpu = torch.cuda.is_available()
    result = run(CONFIG, ["ray.num_workers=1", f"train.epochs={epochs}", "tracking.enabled=false",
                          "tracking.register_model=null", f"ray.use_gpu={str(gpu).lower()}",
                          f"ray.mixed_precision={str(bf16 and gpu).lower()}", *overrides])
    sps = [v for _, v in sorted(result.history["perf/samples_per_s"])]   # the worker's rows / its epoch
    acc = [v for _, v in sorted(result.history["eval/accuracy"])]
    rows = round(sps[-1] * result.final["time/epoch_s"])
    return {"device": "cuda" if gpu else "cpu", "steady_epoch_s": rows / statistics.median(sps[1:]),
            "wall_s": time.time() - t0, "accuracy": acc[-1], "rows": rows, "epochs_reported": len(sps)}


CONTENDERS = {
    "plain loop fp32": lambda a: plain(a.epochs, False, a.override),
    "plain loop bf16": lambda a: plain(a.epochs, True, a.override),
    "consortium ray 1 worker fp32": lambda a: consortium(a.epochs, False, a.override),
    "consortium ray 1 worker bf16": lambda a: consortium(a.epochs, True, a.override),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--override", action="append", default=[], help="a job override for every contender")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/results/gpu_ddp.json"))
    args = ap.parse_args()
    if args.one:   # a contender in this fresh process: one JSON line
        print("RESULT " + json.dumps(CONTENDERS[args.one](args)), flush=True)
        return
    runs: dict[str, list[dict]] = {k: [] for k in CONTENDERS}
    errors: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in CONTENDERS:
            cmd = [sys.executable, __file__, "--one", name, "--epochs", str(args.epochs)]
            cmd += [x for o in args.override for x in ("--override", o)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                errors[name] = (proc.stdout[-1500:] + proc.stderr[-3000:])
                print(f"{name}: FAILED rc={proc.returncode}\n{errors[name]}", flush=True)
                continue
            runs[name].append(json.loads(line[0][7:]))
            print(f"{name}: {runs[name][-1]}", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) if isinstance(rs[0][k], (int, float)) else rs[0][k]
               for k in rs[0] if rs[0][k] is not None} for n, rs in runs.items() if rs}
    base = med.get("plain loop fp32", {}).get("steady_epoch_s")
    for n, m in med.items():
        if base:
            m["epoch_vs_plain_fp32"] = m["steady_epoch_s"] / base
        print(f"| {n} | {m['device']} | epoch {m['steady_epoch_s'] * 1000:.1f} ms | "
              f"{m.get('epoch_vs_plain_fp32', float('nan')):.2f}x | wall {m['wall_s']:.1f} s | acc {m['accuracy']:.4f} |")
    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "epochs": args.epochs, "repeats": args.repeats, "overrides": args.override}
    Path(args.out).write_text(json.dumps({**info, "median": med, "runs": runs, "errors": errors}, indent=2))
    print(f"wrote {args.out}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
