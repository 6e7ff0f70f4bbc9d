"""Fewer bytes per update, side by side: the main job (10 hospitals, breast cancer, MLP 30-64-2) and
the four heart-disease silos (MLP 13-32-2), each uncompressed and with every `federated.compression`
method (top-k at 10%, error feedback on), same seed, same engine.

Reported per job and method: the pooled accuracy on the hospitals' test rows (and on the server's
held-out rows where the job has them), the bytes every hospital sent up in a round (`comm/bytes_up`,
the whole reply: the update, its metrics, the arrays' headers) and the ratio to uncompressed.
Targets (issue 36): int8 within 0.5 points at >= 3.5x fewer bytes up, top-10% within 0.5 points at
>= 5x. Writes bench/results/compression.json.

    python -m bench.compression
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import RESULTS, ROOT

JOBS = {"main (hospitals_fedavg.yaml)": ("hospitals_fedavg.yaml", ["tracking.register_model=null"]),
        "heart silos (heart_disease_sites.yaml)": ("heart_disease_sites.yaml",
                                                   [f"data.path={ROOT / 'configs/data/heart_disease'}"])}
METHODS = [None, "float16", "bfloat16", "int8", "topk"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(RESULTS / "compression.json"))
    args = parser.parse_args()
    from orchestrator.jobs.runner import run_job
    from orchestrator.jobs.runtime import prepare_environment
    from orchestrator.spec.loading import load_job

    prepare_environment()
    store = f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlruns.db'}"
    out: dict = {}
    for label, (config, overrides) in JOBS.items():
        rows = {}
        for method in METHODS:
            extra = [f"federated.compression={{method: {method}}}"] if method else []
            result = run_job(load_job(ROOT / "configs" / config, [f"tracking.uri={store}", *overrides, *extra]))
            f = result.final
            rows[method or "none"] = {"eval/accuracy": f.get("eval/accuracy"), "central/accuracy": f.get("central/accuracy"),
                                      "bytes_up_per_round": f["comm/bytes_up"], "bytes_down_per_round": f["comm/bytes_down"]}
        base = rows["none"]
        for row in rows.values():
            row["ratio_up"] = base["bytes_up_per_round"] / row["bytes_up_per_round"]
            row["accuracy_points"] = 100 * (row["eval/accuracy"] - base["eval/accuracy"])
        out[label] = rows
        print(label, json.dumps(rows, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
