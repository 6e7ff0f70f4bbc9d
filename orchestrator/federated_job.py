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

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from clients.client_app import app as client_app
from orchestrator.config import JobSpec
from orchestrator.models import build_model, mean_scale, standardizer
from orchestrator.plan import DataPlan
from orchestrator.runtime import quiet_flower, ray_init_args
from orchestrator.tracking import TrackedRun
from orchestrator.training import evaluate, tensors
from strategies.base import RoundReport
from strategies.registry import build_strategy


@dataclass
class FederatedOutcome:
    model: torch.nn.Module
    final: dict[str, float] = field(default_factory=dict)
    first_round_s: float | None = None
    label_counts: np.ndarray | None = None   # hospitals x classes, training rows
    confusion: np.ndarray | None = None      # summed over hospitals' test rows, last round


def _weighted(hospitals: dict[int, dict[str, float]], key: str) -> float | None:
    pairs = [(m[key], m.get("num-examples", 0.0)) for m in hospitals.values() if key in m]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return float(sum(v * w for v, w in pairs) / total)


class RoundLogger:
    """Turns Flower round reports into MLflow metrics, one log_batch per round."""

    def __init__(self, run: TrackedRun, names: list[str], num_classes: int):
        self.run, self.names, self.num_classes = run, names, num_classes
        self.confusion: np.ndarray | None = None

    def __call__(self, report: RoundReport) -> None:
        step, m = report.server_round, {}
        prefix = "train" if report.phase == "train" else "eval"
        key = "train_loss" if report.phase == "train" else "eval_loss"
        if (v := _weighted(report.hospitals, key)) is not None:
            m[f"{prefix}/loss"] = v
        if report.phase == "evaluate" and (v := _weighted(report.hospitals, "eval_accuracy")) is not None:
            m["eval/accuracy"] = v
        for pid, hm in report.hospitals.items():
            name = self.names[pid] if 0 <= pid < len(self.names) else str(pid)
            m[f"hospital_{name}/{prefix}/loss"] = hm[key]
            m[f"hospital_{name}/{prefix}/num_examples"] = hm.get("num-examples", 0.0)
            if report.phase == "evaluate":
                m[f"hospital_{name}/eval/accuracy"] = hm["eval_accuracy"]
        counts = [e["confusion"]["counts"] for e in report.extras.values() if "confusion" in e]
        if counts:
            k = self.num_classes
            self.confusion = np.sum([np.asarray(c, dtype=np.int64).reshape(k, k) for c in counts], axis=0)
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


def _census(grid: Grid, nodes: list[int], config: ConfigRecord, dim: int, num_classes: int
            ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Ask every hospital for aggregates only: per-feature sums (-> the consortium's feature mean
    and standard deviation) and its training-label histogram (-> the partition plot)."""
    messages = [Message(content=RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    totals = np.zeros((3, dim))
    labels = np.zeros((len(nodes), num_classes), dtype=np.int64)
    failures = []
    for reply in grid.send_and_receive(messages, timeout=600):
        if reply.has_error():
            failures.append(reply.error.reason)
            continue
        totals += np.stack(reply.content["stats"].to_numpy_ndarrays())
        pid = int(reply.content["metrics"]["partition-id"])
        if 0 <= pid < len(nodes):
            labels[pid] = reply.content["labels"]["train"]
    if failures:
        raise RuntimeError(f"{len(failures)} hospital(s) failed the census query: {failures[0]}")
    return mean_scale(*totals), labels


def run_federated(job: JobSpec, plan: DataPlan, run: TrackedRun) -> FederatedOutcome:
    from flwr.simulation import run_simulation

    fed = job.federated
    num_clients = len(plan.hospitals)
    torch.manual_seed(job.seed)
    model = build_model(job.model, plan.num_features, plan.num_classes)
    outcome = FederatedOutcome(model=model)
    logger = RoundLogger(run, plan.hospitals, plan.num_classes)
    central = tensors(plan.central.X_test, plan.central.y_test) if plan.central else None
    t0 = time.perf_counter()

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Called by Flower at the end of every round: the natural place to flush the round's metrics.
        res = None
        if central is not None:
            model.load_state_dict(arrays.to_torch_state_dict())
            r = evaluate(model, *central, job.train.loss)
            run.log_metrics({"central/accuracy": r["accuracy"], "central/loss": r["loss"]}, server_round)
            res = MetricRecord({"accuracy": r["accuracy"], "loss": r["loss"]})
        if server_round > 0:
            run.log_metrics({"time/round_end_s": time.perf_counter() - t0}, server_round)
            if outcome.first_round_s is None:
                outcome.first_round_s = time.perf_counter() - t0
        run.flush()
        return res

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = ConfigRecord({"job": job.model_dump_json(), "schema": json.dumps(plan.schema.to_dict())})
        nodes = _wait_for_nodes(grid, num_clients)
        (mean, scale), outcome.label_counts = _census(grid, nodes, config, plan.num_features, plan.num_classes)
        if job.data.standardize:
            standardizer(model).set(mean, scale)
        strategy = build_strategy(fed.strategy, num_clients=num_clients, fraction_fit=fed.fraction_fit,
                                  fraction_evaluate=fed.fraction_evaluate, listener=logger)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=fed.rounds,
            train_config=config,
            evaluate_config=ConfigRecord(dict(config)),
            evaluate_fn=central_eval,
        )
        model.load_state_dict(result.arrays.to_torch_state_dict())

    backend_config = {
        "client_resources": {"num_cpus": fed.client_resources.num_cpus, "num_gpus": fed.client_resources.num_gpus},
        "init_args": ray_init_args(),
    }
    import ray

    if ray.is_initialized():
        # Flower shuts its runtime down when the simulation ends: it must never be one that a
        # Ray Train job (or the user) still needs, so the simulation always starts its own.
        ray.shutdown()
    verbose = os.environ.get("CONSORTIUM_VERBOSE") == "1"
    quiet_flower(verbose)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                   backend_config=backend_config, verbose_logging=verbose)
    outcome.final = {k: v for k, v in run.last.items() if "/" in k and not k.startswith("hospital_")}
    outcome.confusion = logger.confusion
    return outcome
