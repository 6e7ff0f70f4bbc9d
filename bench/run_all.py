"""Every benchmark, one command; results in bench/results/*.json and a combined bench/results/README.md.

    .venv/bin/python -m bench.run_all          # 12.5-14.5 min on a 2-core machine
    .venv/bin/python -m bench.run_all --quick  # 1 repeat each, 5 rounds: a smoke run

Not part of the test suite: absolute times on a shared machine are noisy; the ratios between
contenders measured side by side in one run are what the tables are for.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], help="benchmarks to take from bench/results as they are")
    a = ap.parse_args()
    repeats = 1 if a.quick else 3
    t0 = time.time()
    from bench import federated_overhead, scale

    if "federated_overhead" not in a.skip:
        federated_overhead.main(repeats=repeats, rounds=5 if a.quick else 20)
    if "scale" not in a.skip:
        # Flower's simulation does not reach round 1 with 10 000 hospitals in minutes (measured
        # separately, see the README); the inline engine's 100 adds nothing to its 1 000; 100 000
        # hospitals only the vectorized engine is asked to hold (< 4 GiB)
        scale.main(sizes=(100, 1000) if a.quick else (100, 1000, 10000, 100000), rounds=3, repeats=repeats,
                   skip={("simulation", 10000), ("inline", 100), ("simulation", 100000), ("inline", 100000),
                         ("vectorized", 100)})
    if "ray_ddp" not in a.skip:
        subprocess.run([sys.executable, str(ROOT / "bench/ray_ddp.py"), "--repeats", str(repeats)], check=True,
                       stdout=open(RESULTS / "ray_ddp.md", "w"))
    if "deployment" not in a.skip:  # Flower's deployment engine: ~9 min on 2 cores (a process per message)
        from bench import deployment

        deployment.main(rounds=3 if a.quick else 4, repeats=1)
    parts = [f"# Benchmarks\n\n{time.strftime('%Y-%m-%d')}, {machine()}; `python -m bench.run_all` "
             f"took {(time.time() - t0) / 60:.1f} min.\n"]
    for name in ("federated_overhead", "scale", "ray_ddp", "deployment"):
        if not (RESULTS / f"{name}.md").exists():
            continue
        text = (RESULTS / f"{name}.md").read_text().strip()
        if name == "ray_ddp":
            text = "Ray DDP, digits CNN (configs/cluster_ddp.yaml), median of 3: " \
                   "steady-state epoch vs a plain single-process loop; start-up separately.\n\n" + \
                   "\n".join(line for line in text.splitlines() if line.startswith("|"))
        parts.append(f"## {name.replace('_', ' ')}\n\n{text}\n")
    (RESULTS / "README.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
