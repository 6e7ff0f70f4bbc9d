"""The small-CNN family in the vectorized engine vs the inline one, side by side: 100 simulated
hospitals holding real 8x8 digit images (scikit-learn's digits, IID), 10% of them per round, a
CNN [8, 16], FedAvg. Seconds of a later round (round end to round end), and the final metrics,
which must agree to 1e-4 (the vectorized engine batches the same seeded steps).

    .venv/bin/python bench/images_vectorized.py [--hospitals 100] [--rounds 10] [--repeats 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, consortium_cmd, measured, mlflow_timings, save  # noqa: E402


def one(engine: str, hospitals: int, rounds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-imgvec-{engine}-"))
    uri = f"sqlite:///{work / 'mlruns.db'}"
    m = measured(consortium_cmd(ROOT / "configs/hospitals_fedavg.yaml", f"tracking.uri={uri}", "data.source=digits",
                                "model.name=cnn", "model.channels=[8,16]", "model.dropout=0", "model.hidden=[64]",
                                "federated.partition.name=iid", f"federated.num_clients={hospitals}",
                                f"federated.rounds={rounds}", "federated.fraction_fit=0.1",
                                "federated.fraction_evaluate=0.1", "tracking.register_model=null",
                                "explain.enabled=false", "train.optimizer.name=adam", "train.optimizer.lr=0.01",
                                f"federated.engine={engine}", "--json", "-q"),
                 cwd=work, timeout=1800)
    t = mlflow_timings(uri)
    return {"engine": engine, "wall_s": m["wall_s"], "round_s": t["later_round_s"], "accuracy": t["accuracy"],
            "final": m.get("final", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hospitals", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"inline": [], "vectorized": []}
    for _ in range(args.repeats):
        for engine in runs:   # interleaved
            runs[engine].append(one(engine, args.hospitals, args.rounds))
    inline = statistics.median(r["round_s"] for r in runs["inline"])
    vector = statistics.median(r["round_s"] for r in runs["vectorized"])
    a, b = runs["inline"][0]["final"], runs["vectorized"][0]["final"]
    shared = sorted(k for k in a if k in b and isinstance(a[k], float) and not k.startswith(("time/", "perf/")))
    worst = max((abs(a[k] - b[k]) for k in shared), default=float("nan"))
    table = "\n".join([
        f"| {args.hospitals} hospitals x 10%, cnn [8,16] on digits | inline | vectorized | ratio |",
        "|---|---|---|---|",
        f"| later round (s) | {inline:.3f} | {vector:.3f} | {vector / inline:.2f} |",
        f"| final accuracy | {runs['inline'][0]['accuracy']:.4f} | {runs['vectorized'][0]['accuracy']:.4f} | "
        f"max metric diff {worst:.2e} over {len(shared)} metrics |"])
    save("images_vectorized", {"hospitals": args.hospitals, "rounds": args.rounds, "runs": runs,
                               "ratio": vector / inline, "max_final_metric_diff": worst}, table)


if __name__ == "__main__":
    main()
