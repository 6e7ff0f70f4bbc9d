"""What the hospitals' own controls cost a round: the site policy's checks, the privacy ledger
(a SQLite row committed with fsync before each DP update leaves) and the audit log (two
hash-chained, fsync'ed entries a message, each payload's SHA-256 over Flower's objects).

The four heart hospitals with local DP (the ledger's work), in this process one after another
(the inline engine: no Ray, no per-message processes, so the controls' cost is least diluted),
with `federated.sites` (a policy with k = 5 and a budget at every hospital) and without, in
alternation, `--repeats` times each. A round is the median time between round ends (rounds
2..N). Also timed: the guard's own work per message, isolated (`clients.site.guard` around a
handler that returns a prepared reply). Writes bench/results/site_records.json.

    python -m bench.site_records [--rounds 6] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT


def _round_s(sites: Path | None, rounds: int, store: str) -> float:
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    overrides = [f"data.path={ROOT / 'configs/data/heart_disease'}", f"federated.rounds={rounds}",
                 "federated.engine=inline", "federated.dp={mode: local, noise_multiplier: 1.0}",
                 f"tracking.uri={store}", "explain.enabled=false"]
    if sites is not None:
        overrides.append(f"federated.sites={sites}")
    result = run_job(load_job(ROOT / "configs/heart_disease_sites.yaml", overrides))
    ends = result.round_ends_s
    return statistics.median(b - a for a, b in zip(ends[1:], ends[2:]))


def _guard_ms(n: int = 200) -> dict[str, float]:
    """The controls' own work, isolated: the guard around a handler that returns a prepared reply
    (a 13-32-2 MLP's weights; two audit entries, each payload hashed), and one DP round's ledger
    write with the RDP composition of a dataset's 100 earlier releases."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

    from clients import site
    from clients.ledger import Ledger, Release, epsilon
    from orchestrator.adapters.flower import server_identity, stamp
    from orchestrator.core import protocol as P

    folder = Path(tempfile.mkdtemp())
    (folder / "policy.yaml").write_text("min_count: 5\nprivacy: {epsilon_budget: 1.0e9}\n")
    weights = [np.random.rand(32, 13).astype(np.float32), np.random.rand(32).astype(np.float32),
               np.random.rand(2, 32).astype(np.float32), np.random.rand(2).astype(np.float32)]
    context = Context(run_id=1, node_id=1, node_config={P.SITE_DIR: str(folder), P.POLICY: str(folder / "policy.yaml"),
                                                        P.PARTITION_ID: 0, P.DATA_PATH: "/data/ward.csv"},
                      state=RecordDict(), run_config={})
    with server_identity(1, 0):
        msg = Message(RecordDict({P.ARRAYS: ArrayRecord(weights), P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})}),
                      dst_node_id=1, message_type="train")
        stamp(msg, 1, 0)

        def handler(message, context):
            return Message(RecordDict({P.ARRAYS: ArrayRecord(weights),
                                       P.METRICS: MetricRecord({P.NUM_EXAMPLES: 200})}), reply_to=message)

        site.guard(msg, context, handler)
        start = time.perf_counter()
        for _ in range(n):
            site.guard(msg, context, handler)
        guarded = (time.perf_counter() - start) / n
        start = time.perf_counter()
        for _ in range(n):
            handler(msg, context)
        bare = (time.perf_counter() - start) / n
    book = Ledger(folder / "ledger.db")
    one = Release(1.0, 0.14, 16)
    for r in range(100):
        book.record("ward", "earlier", "job", "local", r, one)
    start = time.perf_counter()
    for r in range(20):
        book.record("ward", "now", "job", "local", r, one)
        epsilon(book.releases("ward"), 1e-5)
    ledger = (time.perf_counter() - start) / 20
    return {"guard_ms_per_message": (guarded - bare) * 1000, "ledger_ms_per_dp_round": ledger * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "site_records.json"))
    args = parser.parse_args()
    from orchestrator.jobs.runtime import prepare_environment

    prepare_environment()
    work = Path(tempfile.mkdtemp())
    store = f"sqlite:///{work / 'mlruns.db'}"
    sites = work / "sites"
    sites.mkdir()
    (sites / "policy.yaml").write_text("min_count: 5\nprivacy: {dp: local, epsilon_budget: 1.0e9}\n")
    plain, guarded = [], []
    _round_s(None, 3, store)   # warm the caches both contenders read
    for _ in range(args.repeats):
        plain.append(_round_s(None, args.rounds, store))
        guarded.append(_round_s(sites, args.rounds, store))
    isolated = _guard_ms()
    out = {"round_s_without": statistics.median(plain), "round_s_with": statistics.median(guarded),
           "ratio": statistics.median(guarded) / statistics.median(plain), "runs": {"without": plain, "with": guarded},
           **isolated, "messages_per_hospital_round": 2,   # train and evaluate (each: an entry in, an entry out)
           "rounds": args.rounds, "repeats": args.repeats, "engine": "inline", "hospitals": 4, "dp": "local"}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
