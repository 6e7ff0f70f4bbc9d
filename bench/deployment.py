"""A deployed round: Consortium's Flower App vs a minimal PyTorch Flower App, in one federation.

    .venv/bin/python bench/deployment.py [--rounds 6] [--repeats 1]

One local federation (`consortium federation poc`'s: SuperLink with TLS and SuperNode
authentication, one SuperNode per heart-disease hospital given only its CSV) runs both apps in
turn, side by side, on the same SuperNodes:

  minimal     the shape of Flower's quickstart: a ServerApp running Flower's FedAvg for N rounds,
              a ClientApp that imports torch, reads its CSV with numpy, trains the same MLP
              (13-32-2, dropout 0.1, Adam 0.01, batch 32, 2 epochs) and replies
  consortium  `consortium run configs/heart_disease_sites.yaml` with federated.engine: deployment
              (census, schema agreed from the hospitals, pooled metrics, MLflow, the model logged)

each on SuperNodes whose ClientApp processes start as Flower starts them (a fresh `flwr-clientapp`
per message: CONSORTIUM_WARM_CLIENTAPP=0), forked warm per message from a zygote that imported torch
and Flower once (=fork), and as Consortium runs them by default: one ClientApp process per
SuperNode, kept alive between messages (=1; orchestrator/federation/zygote.py). The waits between
messages are Consortium's in every row (orchestrator/federation/supernode.py, federated.poll_interval_s).

A round is the time between two round ends as the ServerApp saw them (the minimal app prints them,
ours logs `time/round_end_s`), median over rounds 2..N; memory is the peak RSS of a SuperNode's
whole process tree (its ClientApp processes included); CPU is each component's CPU seconds per
round over the kept run (where a deployed round's time goes on this machine, beside the simulated
one). Also reported: the same job's simulated round (Flower's simulation engine) for comparison.
Writes bench/results/deployment.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT  # noqa: E402

MINIMAL_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "minimalapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "minimalapp.server:app"
clientapp = "minimalapp.client:app"

[tool.flwr.app.config]
num-server-rounds = 4
"""

MINIMAL_SERVER = '''import time

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from minimalapp.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    t0 = time.perf_counter()
    while len(list(grid.get_node_ids())) < 4:
        time.sleep(0.2)

    def round_end(server_round, arrays):
        print(f"[minimal] round {server_round} end {time.perf_counter() - t0:.3f}", flush=True)
        return None

    FedAvg(fraction_train=1.0, fraction_evaluate=1.0).start(
        grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]), evaluate_fn=round_end)
'''

MINIMAL_TASK = '''import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))

    def forward(self, x):
        return self.body(x)


def load(path, seed=0):
    rows = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64)
    names = [n for n in rows.dtype.names if n != "target"]
    X = np.stack([rows[n] for n in names], axis=1)
    y = rows["target"].astype(np.int64)
    with np.errstate(all="ignore"):
        fill = np.nan_to_num(np.nanmean(X, axis=0))
    X = np.where(np.isnan(X), fill, X)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    idx = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.75 * len(y))
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    return (t(X[idx[:cut]]), torch.tensor(y[idx[:cut]]), t(X[idx[cut:]]), torch.tensor(y[idx[cut:]]))
'''

MINIMAL_CLIENT = '''import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from minimalapp.task import Net, load

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    X, y, _, _ = load(context.node_config["data-path"])
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(2):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32]).backward()
            opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    _, _, X, y = load(context.node_config["data-path"])
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.eval()
    with torch.no_grad():
        out = model(X)
    metrics = {"num-examples": len(y), "eval_loss": float(torch.nn.functional.cross_entropy(out, y)),
               "eval_accuracy": float((out.argmax(1) == y).float().mean())}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
'''


def minimal_app(root: Path) -> Path:
    app = root / "minimal-app"
    (app / "minimalapp").mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(MINIMAL_PYPROJECT)
    for name, text in {"__init__": "", "server": MINIMAL_SERVER, "task": MINIMAL_TASK,
                       "client": MINIMAL_CLIENT}.items():
        (app / "minimalapp" / f"{name}.py").write_text(text)
    return app


class TreeRSS(threading.Thread):
    """Peak RSS of each SuperNode's whole process tree, sampled every 0.2 s; and the CPU seconds of
    every process below this one, by component, once `cpu_from` is set."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, {p: 0 for p in pids}, threading.Event()
        self.cpu: dict[int, tuple[str, float, float]] = {}   # pid -> (component, first, last)

    def run(self):
        import psutil

        me = psutil.Process()
        while not self.done.is_set():
            for p in self.pids:
                try:
                    root = psutil.Process(p)
                    total = sum(q.memory_info().rss for q in [root, *root.children(recursive=True)])
                    self.peak[p] = max(self.peak[p], total)
                except psutil.Error:
                    pass
            for q in me.children(recursive=True):
                try:
                    used = sum(q.cpu_times()[:2])
                    kind, first, _ = self.cpu.get(q.pid, (component(" ".join(q.cmdline())), used, used))
                    self.cpu[q.pid] = (kind, first, used)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def cpu_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, first, last in self.cpu.values():
            out[kind] = out.get(kind, 0.0) + last - first
        return out


def component(cmd: str) -> str:
    for key, name in (("federation.supernode", "SuperNodes"), ("flower-superlink", "SuperLink"),
                      ("flwr-serverapp", "ServerApp"), ("zygote", "ClientApps"), ("flwr-clientapp", "ClientApps"),
                      ("flower-superexec", "SuperExecs"), ("orchestrator.cli", "consortium run"), ("flwr ", "flwr CLI")):
        if key in cmd:
            return name
    return "other"


def wait_warm(root: Path, n: int, timeout: float = 120) -> None:
    """Until every SuperNode's zygote has imported torch and Flower (its socket appears then)."""
    deadline = time.monotonic() + timeout
    while len(list(root.rglob("warm-clientapp/s"))) + len(list(Path("/tmp").glob("czy-*/s"))) < n:
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)


def run_minimal(fed, rounds: int, work: Path) -> list[float]:
    from orchestrator.federation.flower import CONNECTION, binary, connection_home, environment, flwr, json_out

    home = connection_home(fed.link)
    proc = flwr(fed.link, "run", str(minimal_app(work)), CONNECTION, "--format", "json", "--run-config",
                f"num-server-rounds={rounds}", home=home, timeout=300)
    run_id = json_out(proc).get("run-id")
    assert run_id, proc.stdout + proc.stderr
    log = subprocess.run([binary("flwr"), "log", str(run_id), CONNECTION, "--stream"], capture_output=True,
                         text=True, env=environment(home), timeout=1800).stdout
    ends = []
    for line in log.splitlines():
        if "[minimal] round" in line:
            r, t = line.split("[minimal] round ")[1].split(" end ")
            if int(r) > 0:  # round 0: Flower's evaluation of the initial model
                ends.append(float(t))
    assert len(ends) == rounds, log[-3000:]
    return ends


def run_consortium(fed, rounds: int, work: Path, engine: str = "deployment") -> list[float]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'mlruns.db'}"
    args = [sys.executable, "-m", "orchestrator.cli", "run", str(ROOT / "configs/heart_disease_sites.yaml"),
            f"federated.rounds={rounds}", f"tracking.uri={uri}", f"data.path={ROOT / 'configs/data/heart_disease'}",
            "--json"]
    if engine == "deployment":
        args += ["federated.engine=deployment", f"federated.superlink={fed.link.address}",
                 f"federated.root_certificates={fed.link.ca}", "federated.num_clients=4"]
    else:
        args += [f"federated.engine={engine}"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=work, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_id = json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]
    hist = MlflowClient(uri).get_metric_history(run_id, "time/round_end_s")
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def per_round(ends: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


MODES = (("stock", "0"), ("fork", "fork"), ("kept", "1"))
ROWS = [("minimal PyTorch Flower App, Flower's per-message processes", "minimal_stock"),
        ("consortium (deployment engine), Flower's per-message processes", "consortium_stock"),
        ("consortium (deployment engine), a warm process forked per message", "consortium_fork"),
        ("minimal PyTorch Flower App, one kept ClientApp process per SuperNode", "minimal_kept"),
        ("consortium (deployment engine), one kept ClientApp process per SuperNode (default)", "consortium_kept"),
        ("consortium, same job simulated", "simulation")]


def main(rounds: int = 6, repeats: int = 1) -> dict:
    from orchestrator.federation.poc import local_federation
    from orchestrator.jobs.runtime import prepare_environment
    from orchestrator.spec.loading import load_job

    prepare_environment()
    job = load_job(ROOT / "configs/heart_disease_sites.yaml", [f"data.path={ROOT / 'configs/data/heart_disease'}"])
    work = Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    res: dict = {"rounds": rounds, "repeats": repeats, "simulation": []}
    for mode, flag in MODES:
        os.environ["CONSORTIUM_WARM_CLIENTAPP"] = flag
        (work / mode).mkdir(parents=True, exist_ok=True)
        apps = ("consortium",) if mode == "fork" else ("minimal", "consortium")
        for app in apps:
            res[f"{app}_{mode}"] = []
        with local_federation(job, work / f"federation-{mode}") as fed:
            if flag != "0":
                wait_warm(work / f"federation-{mode}", len(fed.nodes))
            rss = TreeRSS([d.proc.pid for d in fed.nodes.values()])
            rss.start()
            for _ in range(repeats):  # interleaved: both apps see the same machine load
                if "minimal" in apps:
                    res[f"minimal_{mode}"].append(per_round(run_minimal(fed, rounds, work / mode)))
                cpu_before = rss.cpu_seconds()
                t0 = time.monotonic()
                res[f"consortium_{mode}"].append(per_round(run_consortium(fed, rounds, work / mode)))
                if mode == "kept":
                    wall = time.monotonic() - t0
                    used = {k: v - cpu_before.get(k, 0.0) for k, v in rss.cpu_seconds().items()}
                    res["cpu_kept_run"] = {"wall_s": wall, **{k: round(v, 2) for k, v in sorted(used.items())}}
            rss.done.set()
            res[f"supernode_peak_rss_mib_{mode}"] = max(rss.peak.values()) / 2**20
    os.environ.pop("CONSORTIUM_WARM_CLIENTAPP")
    (work / "sim").mkdir()
    for _ in range(repeats):
        res["simulation"].append(per_round(run_consortium(None, rounds, work / "sim", "simulation")))
    med = {k: statistics.median(v) for k, v in res.items() if isinstance(v, list)}
    res.update({f"{k}_s": v for k, v in med.items()})
    m = med["minimal_stock"]
    res["ratio"] = med["consortium_kept"] / m
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deployment.json").write_text(json.dumps(res, indent=2))
    cpu = res.get("cpu_kept_run", {})
    md = (f"Deployed round, heart disease (4 real hospitals, one SuperNode each, TLS + authentication, "
          f"loopback), {rounds} rounds, median over rounds 2..{rounds} and {repeats} repeat(s).\n\n"
          "| contender | seconds per round | vs minimal (stock) |\n|---|---|---|\n"
          + "".join(f"| {label} | {med[k]:.2f} | {med[k] / m:.2f}x |\n" for label, k in ROWS)
          + "\nPeak RSS of one SuperNode's process tree (its ClientApp processes included): "
          + ", ".join(f"{res[f'supernode_peak_rss_mib_{mode}']:.0f} MiB {mode}" for mode, _ in MODES) + ".\n"
          + (f"\nCPU seconds over the kept consortium run ({cpu['wall_s']:.1f} s wall, census and "
             f"{rounds} rounds, all on this machine's cores): "
             + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if k != "wall_s")
             + ".\n" if cpu else ""))
    (RESULTS / "deployment.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    main(a.rounds, a.repeats)
