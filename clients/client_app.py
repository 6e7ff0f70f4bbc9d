"""The hospital: a Flower ClientApp that trains and evaluates on its own rows and shares only updates.

The server sends the job spec and the agreed schema in every message's config, so the same app runs
in Flower's simulation engine and in its deployment engine (`flower-supernode` with
`--node-config "partition-id=0 num-partitions=3"` and, for natural silos, `data-path=/data/site.csv`).

Messages a hospital answers:
  query     per-feature observed count, sum and sum of squares of its training rows (input scaling)
  train     local epochs from the global model -> updated weights + train loss
  evaluate  the global model on its own test rows -> loss and metrics, confusion counts
            (classification) or error sums (regression) for exact pooling
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.hospitals import hospital_share
from orchestrator.config import JobSpec
from orchestrator.data import Schema, Split, column_fill, fill
from orchestrator.models import build_model, moments, standardizer
from orchestrator import metrics as M
from orchestrator.training import Objective, confusion_counts, tensors, train_epochs
from orchestrator.training import evaluate as evaluate_model

PARTITION_KEY = "partition-id"

app = ClientApp()


@dataclass
class Hospital:
    job: JobSpec
    schema: Schema
    partition_id: int
    name: str
    raw: Split
    _ready: tuple | None = None

    def tensors(self, input_mean: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Imputed once, from this hospital's own training rows. A column it never observed is
        filled with the model's input mean, so it contributes nothing after standardisation."""
        if self._ready is None:
            values = column_fill(self.raw.X_train, self.job.data.impute, fallback=input_mean)
            self._ready = (*tensors(fill(self.raw.X_train, values), self.raw.y_train),
                           *tensors(fill(self.raw.X_test, values), self.raw.y_test))
        return self._ready


# A simulation actor serves many hospitals in turn: keep each one's data for the job's lifetime.
_HOSPITALS: dict[tuple[str, int], Hospital] = {}


def _hospital(message: Message, context: Context) -> Hospital:
    cfg = message.content["config"]
    pid = int(context.node_config[PARTITION_KEY])
    job_key = str(cfg["job"]) + str(cfg["schema"])
    key = (job_key, pid)
    if key not in _HOSPITALS:
        for old in [k for k in _HOSPITALS if k[0] != job_key]:
            del _HOSPITALS[old]  # a new job in this process: forget the previous one's data
        job = JobSpec.model_validate_json(str(cfg["job"]))
        schema = Schema.from_dict(json.loads(str(cfg["schema"])))
        num = int(context.node_config.get("num-partitions", job.federated.num_clients or 1))
        data_path = context.node_config.get("data-path")
        name, split = hospital_share(job, schema, pid, num, str(data_path) if data_path else None)
        torch.set_num_threads(max(1, int(job.federated.client_resources.num_cpus)))
        _HOSPITALS[key] = Hospital(job, schema, pid, name, split)
    return _HOSPITALS[key]


def _model(h: Hospital, message: Message) -> torch.nn.Module:
    model = build_model(h.job.model, len(h.schema.features), len(h.schema.classes))
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    return model


def _objective(h: Hospital, model: torch.nn.Module, message: Message) -> Objective:
    config = message.content["config"]
    weights = json.loads(str(config["class-weights"])) if "class-weights" in config else None
    return Objective.of(h.job, len(h.schema.classes), weights, model)


@app.query()
def query(message: Message, context: Context) -> Message:
    h = _hospital(message, context)
    count, total, sumsq = moments(h.raw.X_train)
    stats = [count, total, sumsq]
    if h.schema.regression:  # the target's sums set the regression output's scale
        y = h.raw.y_train.astype(np.float64)
        stats.append(np.array([len(y), y.sum(), (y**2).sum()]))
        labels: list[int] = []
    else:
        labels = np.bincount(h.raw.y_train, minlength=len(h.schema.classes)).tolist()
    content = RecordDict({
        "stats": ArrayRecord(stats),
        "metrics": MetricRecord({PARTITION_KEY: h.partition_id, "num-examples": len(h.raw.y_train)}),
        "labels": ConfigRecord({"train": labels}),  # label histogram: counts only, no rows
    })
    return Message(content=content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    h = _hospital(message, context)
    model = _model(h, message)
    X, y, _, _ = h.tensors(standardizer(model).mean.numpy())
    config = message.content["config"]
    server_round = int(config["server-round"])
    epochs = h.job.train.epochs
    loss = train_epochs(model, X, y, h.job.train, epochs,
                        seed=h.job.seed * 100_003 + server_round * 1_009 + h.partition_id,
                        proximal_mu=float(config.get("proximal-mu", 0.0)),  # set by FedProx
                        objective=_objective(h, model, message),
                        epoch_offset=(server_round - 1) * epochs, total_epochs=h.job.federated.rounds * epochs)
    metrics = {PARTITION_KEY: h.partition_id, "num-examples": int(len(y)), "train_loss": loss}
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    h = _hospital(message, context)
    model = _model(h, message)
    _, _, X, y = h.tensors(standardizer(model).mean.numpy())
    objective = _objective(h, model, message)
    res = evaluate_model(model, X, y, objective)
    metrics = {PARTITION_KEY: h.partition_id, "num-examples": res.pop("num_examples")}
    # every hospital sends the same keys (Flower aggregates only uniform records); NaN = undefined
    # here, e.g. AUROC on a test split holding one class
    metrics.update({f"eval_{k}": float(v) for k, v in res.items()})
    records: dict = {"metrics": MetricRecord(metrics)}
    # sums the server pools into the consortium's exact metrics (counts, never rows)
    if h.schema.regression:
        with torch.no_grad():
            pred = objective.predict(model(X)) if len(y) else np.zeros(0)
        records["regression"] = ConfigRecord({"sums": M.regression_sums(y.numpy(), pred).tolist()})
    else:
        confusion = confusion_counts(model, X, y, len(h.schema.classes), objective)
        records["confusion"] = ConfigRecord({"counts": confusion.ravel().tolist()})
    return Message(content=RecordDict(records), reply_to=message)
