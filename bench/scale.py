"""Scale: 100 / 1 000 / 10 000 simulated hospitals on one machine, seconds per round and peak memory.

    .venv/bin/python bench/scale.py [--sizes 100 1000 10000] [--rounds 3] [--repeats 1]

Three engines: Flower's simulation (Ray actors), inline (the same ClientApp in-process, one hospital
after another) and vectorized (in-process, a round's hospitals trained as one batched computation).
Each hospital holds ~12 generated rows (data.source xor, rows = 15 x hospitals, IID), an MLP 2-64-2;
fraction_fit = fraction_evaluate from 0.1 (100) to 0.001 (100 000), so every round trains 10 to 100
hospitals. Before round 1 the census queries every hospital once (input scaling).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, consortium_cmd, measured, median_of, mlflow_timings, save  # noqa: E402

FRACTION = {100: 0.1, 1000: 0.05, 10000: 0.01, 100000: 0.001}


def one(n: int, rounds: int, timeout: float = 1800, engine: str = "simulation") -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale{n}-"))
    uri = f"sqlite:///{work / 'mlruns.db'}"
    frac = FRACTION.get(n, max(0.01, min(0.1, 10 / n)))
    m = measured(consortium_cmd(ROOT / "configs/hospitals_fedavg.yaml", f"tracking.uri={uri}", "data.source=xor",
                                f"data.rows={15 * n}", "federated.partition.name=iid", f"federated.num_clients={n}",
                                f"federated.rounds={rounds}", f"federated.fraction_fit={frac}",
                                f"federated.fraction_evaluate={frac}", "tracking.register_model=null",
                                "explain.enabled=false", f"federated.engine={engine}"), cwd=work, timeout=timeout)
    t = mlflow_timings(uri)
    return {**m, "hospitals": n, "engine": engine, "fraction_fit": frac, "first_round_s": t["first_round_at"] - m["_t0"],
            "round_s": t["later_round_s"], "accuracy": t["accuracy"]}


def main(sizes=(100, 1000, 10000), rounds: int = 3, repeats: int = 1, timeout: float = 90,
         engines=("simulation", "inline", "vectorized"), skip=()) -> dict:
    """`skip`: (engine, size) pairs left out (run_all leaves out what takes long and adds nothing)."""
    import subprocess

    med, failed = {}, {}
    for engine in engines:
        for n in sizes:
            if (engine, n) in skip:
                continue
            try:
                med[f"{engine}/{n}"] = median_of([one(n, rounds, timeout, engine) for _ in range(repeats)])
            except subprocess.TimeoutExpired:
                failed[f"{engine}/{n}"] = f"no round within {timeout:.0f} s (killed)"
    earlier = _earlier(med, failed)   # rows not measured this time, kept with the day they were
    rows = ["| engine | hospitals | fraction_fit | trained per round | first round after launch (s) | later round (s) | "
            "wall (s) | peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for key, m in {**med, **earlier}.items():
        engine, n = key.split("/")
        when = f" ({m['measured']})" if key in earlier else ""
        rows.append(f"| {engine}{when} | {n} | {m['fraction_fit']:g} | {round(int(n) * m['fraction_fit'])} | "
                    f"{m['first_round_s']:.1f} | {m['round_s']:.2f} | {m['wall_s']:.1f} | {m['peak_rss_mb']:.0f} |")
    for key, why in failed.items():
        engine, n = key.split("/")
        rows.append(f"| {engine} | {n} | {FRACTION.get(int(n), 0.01):g} | | {why} | | | |")
    for n in sizes:
        if f"inline/{n}" in med and f"vectorized/{n}" in med:
            rows.append(f"\n{n} hospitals: a later round of the vectorized engine is "
                        f"{med[f'vectorized/{n}']['round_s'] / med[f'inline/{n}']['round_s']:.2f}x the inline engine's.")
    table = (f"Scale: simulated hospitals on this machine, {rounds} rounds, median of {repeats}"
             f"{'; a date in brackets: a row of an earlier run' if earlier else ''}.\n\n" + "\n".join(rows))
    for m in med.values():
        m["measured"] = time.strftime("%Y-%m-%d")
    save("scale", {"rounds": rounds, "repeats": repeats, "median": {**med, **earlier}, "failed": failed}, table)
    return med


def _earlier(med: dict, failed: dict) -> dict:
    """The last results file's rows for engine/size pairs this run did not measure (a run of one size
    keeps the others), each with the date it was measured."""
    import json

    from bench.common import RESULTS

    try:
        last = json.loads((RESULTS / "scale.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: {**m, "measured": m.get("measured", last.get("date", "?"))} for k, m in last.get("median", {}).items()
            if k not in med and k not in failed}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--engines", nargs="+", default=["simulation", "inline", "vectorized"])
    a = ap.parse_args()
    t = time.time()
    main(a.sizes, a.rounds, a.repeats, engines=tuple(a.engines))
    print(f"({time.time() - t:.0f} s)")
