"""The contenders of bench/federated_overhead.py, each run in its own process.

    python bench/fed_contenders.py floor|flower ROUNDS

Same workload as configs/hospitals_fedavg.yaml: breast cancer, MLP 30-64-2, 10 Dirichlet(0.5)
hospitals with the same rows, the same local training loop and held-out split. Prints one JSON line:
the absolute time of the first finished round, the median later-round time and the final
accuracy on the central held-out split.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = Path(__file__).resolve().parent.parent / "configs/hospitals_fedavg.yaml"


def _setup(rounds: int):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.plan import plan_data

    job = load_job(CONFIG, [f"federated.rounds={rounds}", "tracking.register_model=null"])
    return job, plan_data(job)


def _hospital_tensors(job, plan, pid: int):
    from clients.hospitals import hospital_share
    from orchestrator.core.splits import column_fill, fill
    from orchestrator.core.training import tensors

    _, split = hospital_share(job, plan.schema, pid, len(plan.hospitals))
    values = column_fill(split.X_train, job.data.impute)
    return tensors(fill(split.X_train, values), split.y_train)


def _scaled_model(job, plan, hospitals):
    """The model with the consortium's input scaling, from the hospitals' training rows' sums."""
    import numpy as np

    from orchestrator.core.models import build_model, mean_scale, moments, standardizer

    import torch

    torch.manual_seed(job.seed)
    model = build_model(job.model, plan.num_features, plan.num_classes)
    totals = sum(np.stack(moments(X.numpy())) for X, _ in hospitals)
    standardizer(model).set(*mean_scale(*totals))
    return model


def floor(rounds: int) -> dict:
    """A hand-written in-process FedAvg loop: the least any orchestrator can cost."""
    import torch

    from orchestrator.core.training import Objective, evaluate, tensors, train_epochs

    job, plan = _setup(rounds)
    torch.set_num_threads(1)
    hospitals = [_hospital_tensors(job, plan, pid) for pid in range(len(plan.hospitals))]
    model = _scaled_model(job, plan, hospitals)
    central = tensors(plan.central.X_test, plan.central.y_test)
    objective = Objective.of(job, plan.num_classes)
    ends, acc = [], None
    for r in range(1, rounds + 1):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        total, summed = 0, None
        for pid, (X, y) in enumerate(hospitals):
            model.load_state_dict(start)
            train_epochs(model, X, y, job.train, job.train.epochs, seed=job.seed * 100_003 + r * 1_009 + pid,
                         objective=objective)
            state = model.state_dict()
            n = len(y)
            summed = {k: v.float() * n for k, v in state.items()} if summed is None else \
                {k: summed[k] + v.float() * n for k, v in state.items()}
            total += n
        model.load_state_dict({k: (v / total).to(start[k].dtype) for k, v in summed.items()})
        for pid, (X, y) in enumerate(hospitals):  # federated evaluation, as the others do
            evaluate(model, X, y, objective)
        acc = evaluate(model, *central, objective)["accuracy"]
        ends.append(time.time())
    return {"first_round_at": ends[0], "later_round_s": statistics.median(b - a for a, b in zip(ends, ends[1:])),
            "accuracy": acc}


def flower(rounds: int) -> dict:
    """Flower's own FedAvg in run_simulation: no census, no tracking, no reports."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from orchestrator.core.models import build_model
    from orchestrator.jobs.runtime import prepare_environment, quiet_flower, ray_init_args
    from orchestrator.core.training import Objective, evaluate, tensors, train_epochs

    prepare_environment()
    quiet_flower(False)
    job, plan = _setup(rounds)
    n = len(plan.hospitals)
    client = ClientApp()
    cache: dict = {}

    def data(context):
        pid = int(context.node_config["partition-id"])
        if pid not in cache:
            cache[pid] = _hospital_tensors(job, plan, pid)
        return pid, cache[pid]

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        pid, (X, y) = data(context)
        model = build_model(job.model, plan.num_features, plan.num_classes)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        r = int(msg.content["config"]["server-round"])
        loss = train_epochs(model, X, y, job.train, job.train.epochs, seed=job.seed * 100_003 + r * 1_009 + pid,
                            objective=Objective.of(job, plan.num_classes))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss})}),
                       reply_to=msg)

    @client.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        pid, (X, y) = data(context)
        model = build_model(job.model, plan.num_features, plan.num_classes)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        res = evaluate(model, X, y, Objective.of(job, plan.num_classes))
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": len(y), "eval_loss": res["loss"],
                                                            "eval_accuracy": res["accuracy"]})}), reply_to=msg)

    server = ServerApp()
    ends: list[float] = []
    result: dict = {}
    central = tensors(plan.central.X_test, plan.central.y_test)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        hospitals = [_hospital_tensors(job, plan, pid) for pid in range(n)]  # scaling: computed up front
        model = _scaled_model(job, plan, hospitals)

        def central_eval(server_round: int, arrays: ArrayRecord):
            if server_round == 0:
                return None
            model.load_state_dict(arrays.to_torch_state_dict())
            result["accuracy"] = evaluate(model, *central, Objective.of(job, plan.num_classes))["accuracy"]
            ends.append(time.time())
            return MetricRecord({"accuracy": result["accuracy"]})

        FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=n).start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
            train_config=ConfigRecord(), evaluate_config=ConfigRecord(), evaluate_fn=central_eval)

    run_simulation(server_app=server, client_app=client, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": ray_init_args()})
    return {"first_round_at": ends[0], "later_round_s": statistics.median(b - a for a, b in zip(ends, ends[1:])),
            "accuracy": result["accuracy"]}


if __name__ == "__main__":
    which, rounds = sys.argv[1], int(sys.argv[2])
    out = {"floor": floor, "flower": flower}[which](rounds)
    out["first_round_s"] = out.pop("first_round_at") - float(os.environ.get("BENCH_T0", "0"))
    print(json.dumps(out))
