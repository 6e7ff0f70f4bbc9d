"""Federated round overhead: the same workload three ways, side by side, median of N repeats.

    .venv/bin/python bench/federated_overhead.py [--repeats 3] [--rounds 20]

Workload (configs/hospitals_fedavg.yaml): breast cancer, MLP 30-64-2, 10 Dirichlet(0.5) hospitals,
20 rounds of 1 local epoch. Contenders, each a fresh process:
  floor       a hand-written in-process FedAvg loop in plain torch (bench/fed_contenders.py)
  flower      Flower's FedAvg in run_simulation, no tracking (bench/fed_contenders.py)
  consortium  `consortium run configs/hospitals_fedavg.yaml` as shipped (`engine: auto`, which runs
              it in the vectorized engine; MLflow tracking into a new SQLite store, written by a
              tracking process of its own; the model registered); also into a store that exists,
              with MLflow in the job's own process (CONSORTIUM_TRACKING_PROCESS=0), tracking off, and
              with each engine named: inline (the same ClientApp in-process, one hospital after
              another) and simulation (Flower's, a Ray actor per hospital: the default until 2026-12)
Reported: time from launch to the first finished round, median later-round time, total wall,
peak RSS of the process tree, CPU seconds of the process tree, final accuracy on the central
held-out split. Beside them, `python -c "import mlflow"` alone: the part of tracking no overlap can
hide on a machine whose cores the job already keeps busy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, consortium_cmd, measured, median_of, mlflow_timings, save  # noqa: E402

CONFIG = ROOT / "configs/hospitals_fedavg.yaml"


def consortium(rounds: int, *extra: str, store_exists: bool = False, env: dict | None = None) -> dict:
    """`store_exists`: the SQLite store is created before launch, as for every job after a user's
    first (MLflow creates its tables on first use, ~3-4 s here); otherwise each job makes its own."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench-fl-"))
    uri = f"sqlite:///{work / 'mlruns.db'}"
    if store_exists:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments()  # creates the tables, outside the timed process
    m = measured(consortium_cmd(CONFIG, f"tracking.uri={uri}", f"federated.rounds={rounds}", *extra), cwd=work, env=env)
    t = mlflow_timings(uri)
    return {**m, "first_round_s": t["first_round_at"] - m["_t0"], "later_round_s": t["later_round_s"],
            "accuracy": t["accuracy"], "log_model_s": t["log_model_s"]}


def untracked(rounds: int) -> dict:
    """The same job with tracking.enabled: false (MLflow never imported): what tracking costs."""
    import statistics

    m = measured(consortium_cmd(CONFIG, "tracking.enabled=false", f"federated.rounds={rounds}",
                                "tracking.register_model=null", "--json"))
    ends = m.pop("round_ends_s")
    final = m.pop("final")
    return {**{k: v for k, v in m.items() if not isinstance(v, (dict, list))},
            "wall_s": m["wall_s"], "first_round_s": m["first_round_at"] - m["_t0"],
            "later_round_s": statistics.median(b - a for a, b in zip(ends, ends[1:])),
            "accuracy": final["central/accuracy"]}


def contender(which: str, rounds: int) -> dict:
    return measured([sys.executable, str(ROOT / "bench/fed_contenders.py"), which, str(rounds)])


def import_mlflow() -> dict:
    return measured([sys.executable, "-c", "import mlflow"], env={"MLFLOW_DISABLE_TELEMETRY": "true"})


def main(repeats: int = 3, rounds: int = 20) -> dict:
    contenders = {"floor (plain torch loop)": lambda: contender("floor", rounds),
                  "raw Flower run_simulation": lambda: contender("flower", rounds),
                  "consortium run": lambda: consortium(rounds),
                  "consortium run, store exists": lambda: consortium(rounds, store_exists=True),
                  "consortium run, MLflow in the job's process": lambda: consortium(
                      rounds, env={"CONSORTIUM_TRACKING_PROCESS": "0"}),
                  "consortium run, tracking off": lambda: untracked(rounds),
                  "consortium run, inline engine": lambda: consortium(rounds, "federated.engine=inline"),
                  "consortium run, simulation engine": lambda: consortium(rounds, "federated.engine=simulation")}
    runs: dict[str, list[dict]] = {k: [] for k in contenders}
    imports = []
    for _ in range(repeats):  # interleaved: drift on a shared machine hits every contender alike
        for name, fn in contenders.items():
            runs[name].append(fn())
        imports.append(import_mlflow())
    med = {k: median_of(v) for k, v in runs.items()}
    imp = median_of(imports)
    floor, flower = med["floor (plain torch loop)"], med["raw Flower run_simulation"]
    rows = ["| contender | first round after launch (s) | later round (s) | vs raw Flower | vs floor | wall (s) | "
            "CPU (s) | peak RSS (MB) | accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in med.items():
        rows.append(f"| {name} | {m['first_round_s']:.1f} | {m['later_round_s']:.3f} | "
                    f"{m['later_round_s'] / flower['later_round_s']:.2f}x | {m['later_round_s'] / floor['later_round_s']:.1f}x | "
                    f"{m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mb']:.0f} | {m['accuracy']:.4f} |")
    on, off = med["consortium run"], med["consortium run, tracking off"]
    warm, inproc = med["consortium run, store exists"], med["consortium run, MLflow in the job's process"]
    tracking = {"wall_on_s": on["wall_s"], "wall_off_s": off["wall_s"], "wall_store_exists_s": warm["wall_s"],
                "overhead_pct": 100 * (on["wall_s"] - off["wall_s"]) / off["wall_s"],
                "overhead_store_exists_pct": 100 * (warm["wall_s"] - off["wall_s"]) / off["wall_s"],
                "round_overhead_pct": 100 * (on["later_round_s"] - off["later_round_s"]) / off["later_round_s"],
                "log_model_s": on.get("log_model_s"), "wall_in_process_s": inproc["wall_s"],
                "tracking_process_vs_in_process": on["wall_s"] / inproc["wall_s"],
                "cpu_on_s": on["cpu_s"], "cpu_off_s": off["cpu_s"], "cores": os.cpu_count(),
                "import_mlflow_wall_s": imp["wall_s"], "import_mlflow_cpu_s": imp["cpu_s"]}
    bound = max(off["wall_s"], on["cpu_s"] / os.cpu_count())   # no schedule on these cores does better
    rows += ["", f"Tracking: wall {on['wall_s']:.1f} s with MLflow (a new store) and {warm['wall_s']:.1f} s "
                 f"(the store exists) vs {off['wall_s']:.1f} s without ({tracking['overhead_pct']:+.1f}% / "
                 f"{tracking['overhead_store_exists_pct']:+.1f}%); per later round "
                 f"{tracking['round_overhead_pct']:+.1f}%; logging the model {tracking['log_model_s'] or float('nan'):.2f} s; "
                 f"MLflow in a tracking process {tracking['tracking_process_vs_in_process']:.2f}x the wall of MLflow "
                 f"in the job's own process ({on['wall_s']:.1f} vs {inproc['wall_s']:.1f} s).",
             f"CPU: {on['cpu_s']:.1f} s tracked vs {off['cpu_s']:.1f} s untracked (MLflow's "
             f"{on['cpu_s'] - off['cpu_s']:.1f} s); on {os.cpu_count()} cores no overlap brings the tracked wall below "
             f"{bound:.1f} s ({100 * (bound - off['wall_s']) / off['wall_s']:+.0f}% of the untracked wall). "
             f"`import mlflow` alone: {imp['wall_s']:.2f} s wall, {imp['cpu_s']:.2f} s CPU "
             f"({100 * imp['wall_s'] / off['wall_s']:.0f}% of the untracked job's wall)."]
    rows += [f"Targets: the job as shipped {on['wall_s'] / floor['wall_s']:.2f}x the floor's wall (<= 2.5x), "
             f"{on['peak_rss_mb']:.0f} MB peak (<= 1024), MLflow {tracking['overhead_pct']:.0f}% of it (<= 15%), "
             f"a later round {on['later_round_s'] / floor['later_round_s']:.2f}x the floor's (<= 1x)."]
    table = (f"Federated round overhead: breast cancer, MLP 30-64-2, 10 Dirichlet(0.5) hospitals, {rounds} rounds; "
             f"median of {repeats}.\n\n" + "\n".join(rows))
    save("federated_overhead", {"repeats": repeats, "rounds": rounds, "median": med, "tracking": tracking,
                                "runs": runs, "import_mlflow": imports}, table)
    return med


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    t = time.time()
    main(a.repeats, a.rounds)
    print(f"({time.time() - t:.0f} s)")
