"""Ray DDP vs a plain single-process loop on configs/cluster_ddp.yaml (digits CNN), side by side.

    .venv/bin/python bench/ray_ddp.py [--repeats 3] [--epochs 5]

Contenders: a plain single-process loop, a plain Ray Train script doing the same training with the
report interval tuned (bench/ray_plain.py), and `consortium run` with 1 and 2 workers.
For each contender: wall time from command start to the first finished epoch, steady-state epoch
time (median of epochs 2..N), samples/s, total wall, and peak RSS of the whole process tree
(driver, raylet, workers), sampled every 0.2 s. Writes bench/results/ray_ddp.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs/cluster_ddp.yaml"

from bench.common import measured  # noqa: E402


def run_consortium(overrides: list[str]) -> dict:
    from mlflow.tracking import MlflowClient

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    uri = f"sqlite:///{work / 'mlruns.db'}"
    m = measured([sys.executable, "-m", "orchestrator.cli", "run", str(CONFIG), f"tracking.uri={uri}",
                  "tracking.register_model=null", *overrides], cwd=work)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("consortium").experiment_id])[0]
    hist = sorted(client.get_metric_history(run.info.run_id, "eval/accuracy"), key=lambda m: m.step)
    epoch_s = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "time/epoch_s"), key=lambda m: m.step)]
    sps = [m.value for m in client.get_metric_history(run.info.run_id, "perf/samples_per_s")]
    return {"first_epoch_s": hist[0].timestamp / 1000 - m["_t0"],
            "steady_epoch_s": statistics.median(epoch_s[1:] or epoch_s),
            "samples_per_s": statistics.median(sps[1:] or sps) if sps else None, "wall_s": m["wall_s"],
            "peak_rss_mb": m["peak_rss_mb"], "accuracy": hist[-1].value}


def run_ray_plain(workers: int, epochs: int) -> dict:
    """A plain Ray Train script doing the same training (bench/ray_plain.py), in its own process."""
    from sklearn.datasets import load_digits

    m = measured([sys.executable, str(ROOT / "bench/ray_plain.py"), str(workers), str(epochs)])
    rows = int(round(len(load_digits().target) * 0.8))
    return {"first_epoch_s": m["first_epoch_at"] - m["_t0"], "steady_epoch_s": m["steady_epoch_s"],
            "samples_per_s": rows / m["steady_epoch_s"], "wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"],
            "accuracy": m["accuracy"]}


def run_plain(epochs: int) -> dict:
    """The floor: the shared loop in this process, no Ray, no MLflow."""
    import torch

    from orchestrator.spec.loading import load_job
    from orchestrator.core.models import build_model, mean_scale, moments, standardizer
    from orchestrator.jobs.plan import plan_data
    from orchestrator.core.training import Objective, evaluate, make_optimizer, shuffled_batches, tensors, train_epoch

    t0 = time.time()
    job = load_job(CONFIG, ["kind=centralized", f"train.epochs={epochs}"])
    data = plan_data(job).centralized
    torch.manual_seed(job.seed)
    model = build_model(job.model, data.X_train.shape[1], 10)
    standardizer(model).set(*mean_scale(*moments(data.X_train)))
    opt, loss_fn = make_optimizer(model.parameters(), job.train.optimizer), Objective.of(job, 10)
    X, y = tensors(data.X_train, data.y_train)
    gen = torch.Generator().manual_seed(0)
    times, first = [], None
    for _ in range(epochs):
        t = time.perf_counter()
        train_epoch(model, opt, loss_fn, X, y, shuffled_batches(len(y), job.train.batch_size, gen))
        times.append(time.perf_counter() - t)
        first = first or time.time() - t0
    acc = evaluate(model, *tensors(data.X_test, data.y_test))["accuracy"]
    steady = statistics.median(times[1:])
    return {"first_epoch_s": first, "steady_epoch_s": steady, "samples_per_s": len(y) / steady,
            "wall_s": time.time() - t0, "peak_rss_mb": psutil.Process().memory_info().rss / 2**20, "accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    contenders = {
        "plain torch, 1 process": lambda: run_plain(args.epochs),
        "plain Ray Train script, 1 worker": lambda: run_ray_plain(1, args.epochs),
        "consortium ray, 1 worker": lambda: run_consortium(["ray.num_workers=1", f"train.epochs={args.epochs}"]),
        "plain Ray Train script, 2 workers": lambda: run_ray_plain(2, args.epochs),
        "consortium ray, 2 workers": lambda: run_consortium(["ray.num_workers=2", f"train.epochs={args.epochs}"]),
    }
    results: dict[str, list[dict]] = {k: [] for k in contenders}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
        for name, fn in contenders.items():
            results[name].append(fn())
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    base = med["plain torch, 1 process"]["steady_epoch_s"]
    print("| contender | first epoch after start (s) | steady epoch (s) | vs plain | samples/s | wall (s) | "
          "peak RSS (MB) | accuracy |\n|---|---|---|---|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m['first_epoch_s']:.1f} | {m['steady_epoch_s']:.3f} | {m['steady_epoch_s'] / base:.2f}x | "
              f"{m['samples_per_s']:.0f} | {m['wall_s']:.1f} | {m['peak_rss_mb']:.0f} | {m['accuracy']:.4f} |")
    plain2, ours2 = med["plain Ray Train script, 2 workers"], med["consortium ray, 2 workers"]
    ours1 = med["consortium ray, 1 worker"]
    print(f"\nTargets: `consortium run configs/cluster_ddp.yaml` (2 workers, MLflow on) {ours2['wall_s'] / plain2['wall_s']:.2f}x "
          f"the wall of a plain Ray Train script (<= 1.05x); a steady epoch of 1 worker "
          f"{ours1['steady_epoch_s'] / base:.2f}x a plain loop's (<= 1.15x).")
    out = ROOT / "bench/results/ray_ddp.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores",
                               "repeats": args.repeats, "median": med, "runs": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
