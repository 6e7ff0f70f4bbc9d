"""Shared by the benchmarks: run a command in a fresh process, sample its process tree's memory."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results"


def tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def measured(cmd: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 900) -> dict:
    """Run `cmd`; wall time, peak RSS of its whole process tree (every 0.2 s), and the JSON it
    printed last on stdout (each contender reports its own timings that way). `cpu_s`: user + system
    seconds of the command and every descendant reaped by its parent (a job's tracking process is),
    from getrusage(RUSAGE_CHILDREN) around it: on N cores a job cannot take less wall than cpu_s / N."""
    work = cwd or Path(tempfile.mkdtemp(prefix="bench-"))
    full = {**os.environ, "CONSORTIUM_HOME": str(work / ".consortium"), **(env or {})}
    full.pop("MLFLOW_TRACKING_URI", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    full["BENCH_T0"] = repr(t0)
    proc = subprocess.Popen(cmd, cwd=work, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, stop = 0, threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.communicate()
        stop.set()
        raise
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {err[-2000:]}")
    reported = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            reported = json.loads(line)
            break
    if "wall_s" in reported:  # the job's own wall (--json) is not the process's
        reported["job_wall_s"] = reported.pop("wall_s")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 2**20, **reported, "_t0": t0, "_dir": str(work)}


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not k.startswith("_")]
    return {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys}


def save(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, no GPU, Python {sys.version.split()[0]}"


def consortium_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "run", str(config), *overrides]


def mlflow_timings(uri: str, experiment: str = "consortium") -> dict:
    """First finished round/epoch (absolute time) and per-round times of the newest run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                             order_by=["attributes.start_time DESC"])[0]
    key = "central/accuracy" if "central/accuracy" in run.data.metrics else "eval/accuracy"
    hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    hist = [m for m in hist if m.step > 0]
    ends = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "time/round_end_s"),
                                    key=lambda m: m.step)]
    later = [b - a for a, b in zip(ends, ends[1:])]
    return {"first_round_at": hist[0].timestamp / 1000, "accuracy": hist[-1].value,
            "later_round_s": statistics.median(later) if later else None,
            "log_model_s": run.data.metrics.get("time/log_model_s"), "run_id": run.info.run_id}
