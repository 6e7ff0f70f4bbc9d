"""Federated hospitals: a Flower ServerApp driving the hospital ClientApp in Flower's simulation engine.

Round 0 asks every hospital for per-feature sums (count, sum, sum of squares of its own training
rows) to set the model's input scaling; no row leaves a hospital. Then `rounds` rounds of the
configured strategy; after each, federated evaluation on every hospital's test split and, where the
data has one, the global model on the server's central held-out split.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from clients.client_app import app as client_app
from clients.client_app import secagg_app
from orchestrator.config import JobSpec
from orchestrator import metrics as M
from orchestrator.models import mean_scale, standardizer
from orchestrator.plan import DataPlan
from orchestrator.runtime import EarlyRuntime, quiet_flower, ray_init_args, start_simulation_runtime
from orchestrator.training import Objective, balanced_weights, evaluate, tensors
from orchestrator.transfer import Start, initial_model
from orchestrator.records import from_state, to_state
from strategies.base import RoundReport
from strategies.registry import build_strategy, sample_size

if TYPE_CHECKING:
    from orchestrator.tracking import TrackedRun


@dataclass
class FederatedOutcome:
    model: torch.nn.Module
    final: dict[str, float] = field(default_factory=dict)
    first_round_s: float | None = None
    first_round_at: float | None = None   # time.time() at the end of the first round/epoch
    label_counts: np.ndarray | None = None   # hospitals x classes, training rows
    confusion: np.ndarray | None = None      # summed over hospitals' test rows, last round


def _weighted(hospitals: dict[int, dict[str, float]], key: str) -> float | None:
    pairs = [(m[key], m.get("num-examples", 0.0)) for m in hospitals.values() if key in m and not np.isnan(m[key])]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return float(sum(v * w for v, w in pairs) / total)


class RoundLogger:
    """Turns Flower round reports into MLflow metrics, one log_batch per round.

    The consortium's eval metrics are pooled exactly from the hospitals' sums (confusion counts,
    regression sums); AUROC, which sums cannot give, is the row-weighted mean over hospitals.
    """

    def __init__(self, run: TrackedRun, names: list[str], num_classes: int):
        self.run, self.names, self.num_classes = run, names, num_classes
        self.confusion: np.ndarray | None = None

    def __call__(self, report: RoundReport) -> None:
        step, m = report.server_round, {}
        prefix = "train" if report.phase == "train" else "eval"
        key = "train_loss" if report.phase == "train" else "eval_loss"
        if (v := _weighted(report.hospitals, key)) is not None:
            m[f"{prefix}/loss"] = v
        for pid, hm in report.hospitals.items():
            name = self.names[pid] if 0 <= pid < len(self.names) else str(pid)
            m[f"hospital_{name}/{prefix}/num_examples"] = hm.get("num-examples", 0.0)
            for k, v in hm.items():
                if k.startswith(f"{prefix}_") and not np.isnan(v):
                    m[f"hospital_{name}/{prefix}/{k[len(prefix) + 1:]}"] = v
        if report.phase == "evaluate":
            if (v := _weighted(report.hospitals, "eval_auroc")) is not None and not np.isnan(v):
                m["eval/auroc"] = v
            counts = [e["confusion"]["counts"] for e in report.extras.values() if "confusion" in e]
            if counts:
                k = self.num_classes
                self.confusion = np.sum([np.asarray(c, dtype=np.int64).reshape(k, k) for c in counts], axis=0)
                m.update({f"eval/{name}": v for name, v in M.from_confusion(self.confusion).items()})
            sums = [e["regression"]["sums"] for e in report.extras.values() if "regression" in e]
            if sums:
                pooled = np.sum([np.asarray(x, dtype=np.float64) for x in sums], axis=0)
                m.update({f"eval/{name}": v for name, v in M.from_regression_sums(pooled).items()})
        eps = [hm["dp_epsilon"] for hm in report.hospitals.values() if "dp_epsilon" in hm]
        if eps:  # local DP: the most any hospital has spent
            m["dp/epsilon"] = max(eps)
        m[f"{prefix}/failures"] = len(report.failures)
        m[f"{prefix}/hospitals"] = len(report.hospitals)
        self.run.log_metrics(m, step)


def _wait_for_nodes(grid: Grid, n: int, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n} hospitals connected within {timeout:.0f}s")
        time.sleep(0.02)
    return nodes


@dataclass
class Census:
    mean: np.ndarray
    scale: np.ndarray
    labels: np.ndarray          # hospitals x classes, training rows
    target: np.ndarray          # regression: (count, sum, sum of squares) of the training targets
    nodes: list[int]            # node id of each hospital, in partition-id order


def _census(grid: Grid, nodes: list[int], config: ConfigRecord, dim: int, num_classes: int,
            num_hospitals: int = 0) -> Census:
    """Ask every hospital for aggregates only: per-feature sums (-> the consortium's feature mean
    and standard deviation), its training-label histogram (-> the partition plot, balanced class
    weights) or, for a regression, its target's sums (-> the output scaling)."""
    messages = [Message(content=RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    totals = np.zeros((3, dim))
    target = np.zeros(3)
    labels = np.zeros((max(len(nodes), num_hospitals), num_classes), dtype=np.int64)
    failures = []
    by_pid: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=600):
        if reply.has_error():
            failures.append(reply.error.reason)
            continue
        arrays = reply.content["stats"].to_numpy_ndarrays()
        totals += np.stack(arrays[:3])
        if len(arrays) > 3:
            target += arrays[3]
        pid = int(reply.content["metrics"]["partition-id"])
        by_pid[pid] = reply.metadata.src_node_id
        if 0 <= pid < len(labels) and num_classes:
            labels[pid] = reply.content["labels"]["train"]
    if failures:
        raise RuntimeError(f"{len(failures)} hospital(s) failed the census query: {failures[0]}")
    mean, scale = mean_scale(*totals)
    return Census(mean, scale, labels, target, [by_pid[p] for p in sorted(by_pid)])


class RoundWriter:
    """Per-round I/O off the rounds' critical path: one thread runs the submitted writes in order
    (flush the round's metrics, then its checkpoint). A failed write is logged, not fatal: the
    metrics stay buffered in the run for the next flush."""

    def __init__(self):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="consortium-round-writer", daemon=True)
        self._thread.start()

    def submit(self, write) -> None:
        self._queue.put(write)

    def _loop(self) -> None:
        import logging

        while (write := self._queue.get()) is not None:
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - keep writing the next rounds
                logging.getLogger("consortium").warning("round checkpoint/flush failed: %s", exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def checkpoint_dir(run_id: str) -> Path:
    from orchestrator.runtime import consortium_home

    return consortium_home() / "federated" / run_id


def save_round(directory: Path, server_round: int, model_state: dict, strategy_state: dict) -> None:
    """model + strategy state after `server_round`, as plain arrays (np.load without pickle reads it)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    for attr, named in strategy_state.items():
        arrays.update({f"strategy/{attr}/{k}": np.asarray(v) for k, v in named.items()})
    tmp = directory / f".round_{server_round:05d}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(directory / f"round_{server_round:05d}.npz")  # a kill mid-write leaves the last good one
    for old in sorted(directory.glob("round_*.npz"))[:-2]:
        old.unlink(missing_ok=True)


def load_last_round(directory: Path) -> tuple[int, dict, dict] | None:
    files = sorted(directory.glob("round_*.npz")) if directory.is_dir() else []
    if not files:
        return None
    with np.load(files[-1], allow_pickle=False) as z:
        # numpy, dtype as saved: a server optimizer may keep the global model in float64
        model = {k[len("model/"):]: z[k].copy() for k in z.files if k.startswith("model/")}
        strategy: dict[str, dict] = {}
        for k in z.files:
            if k.startswith("strategy/"):
                _, attr, name = k.split("/", 2)
                strategy.setdefault(attr, {})[name] = z[k].copy()
    return int(files[-1].stem.split("_")[1]), model, strategy


def run_federated(job: JobSpec, plan: DataPlan, run: TrackedRun, start: Start | None = None,
                  runtime: EarlyRuntime | None = None, resume: bool = False) -> FederatedOutcome:
    fed = job.federated
    num_clients = len(plan.hospitals)
    model, notes = initial_model(job, plan.num_features, plan.num_classes, start)
    if notes:
        run.log_params(notes)
    copied = set(start.weights) if start is not None and start.weights is not None else set()
    outcome = FederatedOutcome(model=model)
    logger = RoundLogger(run, plan.hospitals, plan.num_classes)
    central = tensors(plan.central.X_test, plan.central.y_test) if plan.central else None
    ckpt_dir = checkpoint_dir(run.run_id)
    done, saved_model, saved_strategy = 0, None, {}
    if resume and (last := load_last_round(ckpt_dir)) is not None:
        done, saved_model, saved_strategy = last
    if not resume:
        run.set_tags({"federated.checkpoints": str(ckpt_dir), "federated.engine": fed.engine})
    t0 = time.perf_counter()
    writer = RoundWriter()
    holder: dict = {}
    secure = fed.secagg is not None and fed.secagg.enabled

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Called by Flower at the very end of every round: where metrics are flushed and the
        # round checkpointed.
        server_round += done
        if server_round == done and done > 0:
            return None  # a resumed run: round `done` was evaluated before the interruption
        res = None
        state = arrays.to_torch_state_dict()
        metrics: dict[str, float] = {}
        if central is not None:
            model.load_state_dict(state)
            r = {k: v for k, v in evaluate(model, *central, Objective.of(job, plan.num_classes, None, model)).items()
                 if k != "num_examples"}
            metrics.update({f"central/{k}": v for k, v in r.items()})
            res = MetricRecord({k: float(v) for k, v in r.items() if not np.isnan(v)})
        strategy = holder.get("strategy")
        if server_round > 0:
            metrics["time/round_end_s"] = time.perf_counter() - t0
            if outcome.first_round_s is None:
                outcome.first_round_s = time.perf_counter() - t0
                outcome.first_round_at = time.time()
            if strategy is not None and hasattr(strategy, "epsilon"):
                metrics["dp/epsilon"] = strategy.epsilon()
        run.log_metrics(metrics, server_round)
        if server_round > 0 and strategy is not None:
            # Flower evaluates centrally last: the round is over. Its metrics reach the store
            # first, then the checkpoint, so a run killed in between redoes the round. Both on
            # the writer thread, while the next round trains.
            snapshot = to_state(arrays), {a: {k: np.array(v) for k, v in d.items()}
                                          for a, d in strategy.checkpoint_state().items()}
            writer.submit(lambda: (run.flush(), save_round(ckpt_dir, server_round, *snapshot)))
        else:
            writer.submit(run.flush)
        return res

    def main(grid: Grid, context: Context) -> None:
        config = ConfigRecord({"job": job.model_dump_json(), "schema": json.dumps(plan.schema.to_dict()),
                               "state-dir": str(ckpt_dir / "hospitals")})
        nodes = _wait_for_nodes(grid, min(fed.min_available_clients or num_clients, num_clients))
        census = _census(grid, nodes, config, plan.num_features, plan.num_classes, num_clients)
        outcome.label_counts = census.labels
        if job.data.standardize and "input.mean" not in copied:
            standardizer(model).set(census.mean, census.scale)
        if plan.regression and "output.mean" not in copied:
            n, total, sumsq = census.target
            mean = total / max(n, 1.0)
            model.output.set(mean, float(np.sqrt(max(sumsq / max(n, 1.0) - mean**2, 0.0))))
        weights = None
        if job.train.class_weights == "balanced":
            weights = balanced_weights(census.labels.sum(0))  # consortium-wide label counts
        elif job.train.class_weights:
            weights = list(job.train.class_weights)
        if weights is not None:
            config["class-weights"] = json.dumps(weights)
            if not done:
                run.log_params({"train.class_weights_resolved": ",".join(f"{w:.4g}" for w in weights)})
        if fed.dp is not None and fed.dp.mode == "central":
            config["uniform-weight"] = 1
        if secure:
            from orchestrator.secagg import run_secagg

            run_secagg(grid, context, job, model, config, logger, central_eval,
                       max_weight=float(max(plan.hospital_sizes)))
            return
        strategy = build_strategy(fed.strategy, num_clients=num_clients, fraction_fit=fed.fraction_fit,
                                  fraction_evaluate=fed.fraction_evaluate, listener=logger, seed=job.seed,
                                  nodes=census.nodes, min_fit=fed.min_fit_clients,
                                  accept_failures=fed.accept_failures, dp=fed.dp)
        if hasattr(strategy, "trainable"):
            strategy.trainable = [k for k, p in model.named_parameters() if p.requires_grad]
        holder["strategy"] = strategy
        initial = ArrayRecord(model.state_dict())
        if saved_model is not None:
            initial = from_state(saved_model)
            model.load_state_dict(initial.to_torch_state_dict())
            strategy.load_checkpoint_state(saved_strategy)
            strategy.round_offset = done
            if hasattr(strategy, "replay"):
                strategy.replay(done, sample_size(num_clients, fed.fraction_fit, fed.min_fit_clients or min(2, num_clients)),
                                num_clients)
        if fed.rounds - done <= 0:
            return
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=fed.rounds - done,
            timeout=fed.round_timeout_s,
            train_config=config,
            evaluate_config=ConfigRecord(dict(config)),
            evaluate_fn=central_eval,
        )
        model.load_state_dict(result.arrays.to_torch_state_dict())

    quiet_flower(os.environ.get("CONSORTIUM_VERBOSE") == "1")
    app = secagg_app if secure else client_app
    try:
        if fed.engine == "inline":
            if runtime is not None:
                runtime.stop()
            _run_inline(main, num_clients, app)
        else:
            _run_simulation(main, job, num_clients, runtime, app)
    finally:
        writer.close()  # every round's metrics and checkpoint written, also when stopped
    outcome.final = {k: v for k, v in run.last.items() if "/" in k and not k.startswith("hospital_")}
    outcome.confusion = logger.confusion
    return outcome


def _run_inline(main, num_clients: int, app) -> None:
    from orchestrator.inline_engine import InlineGrid, server_identity

    grid = InlineGrid(app, [{"partition-id": i, "num-partitions": num_clients} for i in range(num_clients)])
    with server_identity(grid.run.run_id):
        main(grid, Context(run_id=grid.run.run_id, node_id=1, node_config={}, state=RecordDict(), run_config={}))


def _run_simulation(main, job: JobSpec, num_clients: int, runtime: EarlyRuntime | None, app) -> None:
    from flwr.simulation import run_simulation

    server_app = ServerApp()
    server_app.main()(main)
    fed = job.federated
    backend_config = {
        "client_resources": {"num_cpus": fed.client_resources.num_cpus, "num_gpus": fed.client_resources.num_gpus},
        "init_args": ray_init_args(),
    }
    import ray

    runtime = runtime or start_simulation_runtime()
    runtime.join()
    verbose = os.environ.get("CONSORTIUM_VERBOSE") == "1"
    try:
        run_simulation(server_app=server_app, client_app=app, num_supernodes=num_clients,
                       backend_config=backend_config, verbose_logging=verbose)
    except KeyboardInterrupt:
        ray.shutdown()  # Ctrl-C / SIGTERM: stop the runtime and the hospitals' actors now
        raise
    finally:
        runtime.stop()
