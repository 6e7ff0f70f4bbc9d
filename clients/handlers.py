"""The hospital's message handlers: train and evaluate on its own rows, share only updates and sums.
The ClientApps that route messages here are in `clients.client_app` (queries: `clients.queries`).
  train     local epochs from the global model -> updated weights + train loss
  evaluate  the global model on its own test rows -> loss and metrics, confusion counts
            (classification) or error sums (regression) for exact pooling; with a stateful
            personalization (clients.personal) its personal model's too, as personal_*
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import kept, personal
from clients.hospitals import hospital_share
from orchestrator.adapters.flower import Records, metric_record, to_torch_state
from orchestrator.core import protocol as P
from orchestrator.core.data import Schema, Split
from orchestrator.core.models import build_model, standardizer
from orchestrator.core.splits import column_fill, fill, has_nan
from orchestrator.core.training import Objective, forward, pooled_sums, scored, tensors, train_epochs
from orchestrator.spec.job import JobSpec
from strategies.registry import hospital_hook

PARTITION_KEY = P.PARTITION_ID


@dataclass
class Hospital:
    job: JobSpec
    schema: Schema
    partition_id: int
    name: str
    raw: Split
    _ready: tuple | None = None
    residual: dict | None = None   # federated.compression's error feedback, where no Flower context keeps it

    def tensors(self, input_mean: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Imputed once, from this hospital's own training rows. A column it never observed is
        filled with the model's input mean, so it contributes nothing after standardisation."""
        if self._ready is None:
            r = self.raw
            gaps = has_nan(r.X_train) or has_nan(r.X_test)   # the statistics only fill gaps
            values = column_fill(r.X_train, self.job.data.impute, fallback=input_mean) if gaps else None
            self._ready = (*tensors(fill(r.X_train, values), r.y_train), *tensors(fill(r.X_test, values), r.y_test))
        return self._ready


# A simulation actor serves many hospitals in turn: keep each one's data for the job's lifetime.
# Keyed by the job (spec + schema text): a new job in this process forgets the previous one's data.
_JOB: dict = {"key": None, "job": None, "schema": None, "hospitals": {}}


def _hospital(message: Message, context: Context) -> Hospital:
    cfg = message.content[P.CONFIG]
    pid = int(context.node_config[PARTITION_KEY])
    job_key = str(cfg[P.JOB]) + str(cfg[P.SCHEMA])
    if _JOB["key"] != job_key:  # parsed once per job, shared by every hospital this process serves
        _JOB.update(key=job_key, job=JobSpec.model_validate_json(str(cfg[P.JOB])),
                    schema=Schema.from_dict(json.loads(str(cfg[P.SCHEMA]))), hospitals={})
    hospitals = _JOB["hospitals"]
    if pid not in hospitals:
        job, schema = _JOB["job"], _JOB["schema"]
        num = int(context.node_config.get(P.NUM_PARTITIONS, job.federated.num_clients or 1))
        data_path = str(context.node_config.get(P.DATA_PATH) or "") or None
        if context.node_config.get(P.CACHE_DIR):  # deployment: one process per message
            from clients.hospitals import cached_share

            name, split = cached_share(job, str(cfg[P.JOB]), schema, pid, num, data_path,
                                       str(context.node_config[P.CACHE_DIR]))
        else:
            name, split = hospital_share(job, schema, pid, num, data_path)
        torch.set_num_threads(max(1, int(job.federated.client_resources.num_cpus)))
        hospitals[pid] = Hospital(job, schema, pid, name, split)
    return hospitals[pid]


def _model(h: Hospital, message: Message) -> torch.nn.Module:
    model = build_model(h.job.model, len(h.schema.features), len(h.schema.classes))
    model.load_state_dict(to_torch_state(message.content[P.ARRAYS]))
    return model


def _objective(h: Hospital, model: torch.nn.Module, message: Message) -> Objective:
    config = message.content[P.CONFIG]
    weights = json.loads(str(config[P.CLASS_WEIGHTS])) if P.CLASS_WEIGHTS in config else None
    return Objective.of(h.job, len(h.schema.classes), weights, model, h.schema.classes)


class InjectedFault(RuntimeError):
    """A failure drill (federated.faults): this hospital fails this round on purpose."""


def local_plan(h: Hospital, server_round: int) -> tuple[int, dict]:
    """This hospital's shuffling seed in this round, and where its epochs lie in the lr schedule."""
    epochs = h.job.train.epochs
    seed = h.job.seed * 100_003 + server_round * 1_009 + h.partition_id
    return seed, dict(epoch_offset=(server_round - 1) * epochs, total_epochs=h.job.federated.rounds * epochs)


def check_fault(h: Hospital, server_round: int) -> None:
    faults = h.job.federated.faults
    if faults is not None and h.partition_id in faults.hospitals and (
            not faults.rounds or server_round in faults.rounds):
        raise InjectedFault(f"hospital {h.name} fails round {server_round} (federated.faults drill)")


def train(message: Message, context: Context) -> Message:
    h = _hospital(message, context)
    config = message.content[P.CONFIG]
    server_round = int(config[P.SERVER_ROUND])
    fed = h.job.federated
    check_fault(h, server_round)
    model = _model(h, message)
    X, y, _, _ = h.tensors(standardizer(model).mean.numpy())
    epochs = h.job.train.epochs
    seed, schedule = local_plan(h, server_round)
    objective = _objective(h, model, message)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    extra: dict = {}
    metrics: dict = {}
    if h.job.model.name == "gan":   # alternating discriminator and generator steps on its own rows
        from orchestrator.core.gan import train_gan

        d_loss, g_loss, steps = train_gan(model, X, y, h.job.train.optimizer.lr, h.job.train.batch_size, epochs, seed)
        metrics.update({"train_d_loss": d_loss, "train_g_loss": g_loss})
        return train_reply(h, message, start, model.state_dict(), d_loss + g_loss, steps, metrics, extra, context)
    how = personal.method(h)
    if how in personal.LOCAL_PARTS:   # its own head / batch norm in place of the global one
        personal.restore(h, model, context, message, server_round)
    elif how == "ditto":              # its personal model's step, pulled towards the weights it was sent
        personal.train_ditto(h, model, X, y, context, message, server_round, seed, objective, schedule)
    if how == "fedrep":
        loss, steps = personal.train_fedrep(h, model, X, y, seed, objective, schedule)
    elif fed.dp is not None and fed.dp.mode == "local":
        from clients import privacy

        loss, steps = privacy.dp_sgd(model, X, y, h.job, seed, objective, **schedule)
        metrics[P.DP_EPSILON] = privacy.epsilon(fed.dp.noise_multiplier, len(y), h.job.train.batch_size, epochs,
                                                server_round, fed.dp.delta)
    else:   # the strategy's hospital half adds its terms (FedProx, SCAFFOLD) to the plain local loop
        loss, steps = _train_with_hook(h, model, X, y, message, context, seed, objective, schedule, metrics, extra)
    if how in personal.LOCAL_PARTS:
        personal.keep(h, model, context, message, server_round)
    return train_reply(h, message, start, model.state_dict(), loss, steps, metrics, extra, context)


def train_reply(h: Hospital, message: Message, start: dict, state: dict, loss: float, steps: int,
                metrics: dict, extra: dict, context: Context | None = None) -> Message:
    """What a hospital sends back after training: its weights (poisoned in an attack drill), its
    row count, loss and steps (FedNova's norms), and `extra` records (a strategy hook's)."""
    fed = h.job.federated
    if fed.attack is not None and h.partition_id in fed.attack.hospitals:
        from clients.updates import poison

        poisoned = poison({k: v.numpy() for k, v in start.items()}, {k: v.numpy() for k, v in state.items()},
                          fed.attack.kind, fed.attack.factor)
        state = {k: torch.from_numpy(v) for k, v in poisoned.items()}
    metrics.update({PARTITION_KEY: h.partition_id, P.NUM_EXAMPLES: int(len(h.raw.y_train)), P.TRAIN_LOSS: loss,
                    P.LOCAL_STEPS: int(steps), P.MOMENTUM: float(h.job.train.optimizer.momentum)})
    if P.UNIFORM_WEIGHT in message.content[P.CONFIG]:  # central DP: every hospital counts once
        metrics[P.UNIFORM_WEIGHT] = 1.0
    arrays = P.from_state(state) if fed.compression is None else P.from_state(_compressed(h, message, context, start, state))
    content = Records({P.ARRAYS: arrays, P.METRICS: metric_record(metrics), **extra})
    return Message(content=content, reply_to=message)


RESIDUAL = "compression-residual"


def _compressed(h: Hospital, message: Message, context: Context | None, start: dict, state: dict) -> dict:
    """federated.compression: the update encoded; what the encoding lost kept for the next round
    (error feedback), in this hospital's Flower context (and its state dir, for a resumed run)."""
    from orchestrator.core.compression import compress_update

    spec = h.job.federated.compression
    assert spec is not None
    server_round = int(str(message.content.config_records[P.CONFIG][P.SERVER_ROUND]))
    before = {k: v.numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in start.items()}
    after = {k: v.detach().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in state.items()}
    residual = None
    if spec.error_feedback:
        residual = (kept.load(RESIDUAL, h.partition_id, context, message, server_round) if context is not None
                    else h.residual) or {}
    sent, residual = compress_update(before, after, spec.method, spec.fraction, residual)
    if residual is not None:
        if context is not None:
            kept.save(RESIDUAL, h.partition_id, context, message, server_round, residual)
        else:
            h.residual = residual
    return sent


def _train_with_hook(h: Hospital, model: torch.nn.Module, X, y, message: Message, context: Context, seed: int,
                     objective: Objective, schedule: dict, metrics: dict, extra: dict) -> tuple[float, int]:
    """Local epochs with what the job's strategy adds at a hospital (`strategies.hospital`): its
    local terms, then its extra records and metrics into the reply and its kept state into this
    hospital's `clients.kept` (the vectorized engine calls the same hook for every hospital)."""
    hook = hospital_hook(h.job.federated.strategy.name)
    content = message.content
    stats: dict = {}
    if not hook.active(content):
        loss = train_epochs(model, X, y, h.job.train, h.job.train.epochs, seed=seed, objective=objective,
                            stats=stats, **schedule)
        return loss, stats.get("steps", 0)
    server_round = int(content[P.CONFIG][P.SERVER_ROUND])
    before = kept.load(hook.keeps, h.partition_id, context, message, server_round) if hook.keeps else None
    sent = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    local = hook.local(content, before, sent)
    loss = train_epochs(model, X, y, h.job.train, h.job.train.epochs, seed=seed, objective=objective,
                        proximal_mu=local.proximal_mu, correction=gradient_terms(model, local.correction),
                        stats=stats, **schedule)
    trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    reply = hook.reply(content, before, sent, trained, stats.get("lr_sum", 0.0))
    extra.update(reply.records)
    metrics.update(reply.metrics)
    if hook.keeps and reply.kept is not None:
        kept.save(hook.keeps, h.partition_id, context, message, server_round, reply.kept)
    return loss, stats.get("steps", 0)


def gradient_terms(model: torch.nn.Module, correction: dict | None) -> list[torch.Tensor] | None:
    """A hook's gradient correction as `train_epoch` takes it: one tensor per trainable parameter
    (zeros for those it does not name)."""
    if correction is None:
        return None
    return [torch.from_numpy(correction[k]) if k in correction else torch.zeros_like(p)
            for k, p in model.named_parameters() if p.requires_grad]


def evaluate(message: Message, context: Context) -> Message:
    h = _hospital(message, context)
    model = _model(h, message)
    _, _, X, y = h.tensors(standardizer(model).mean.numpy())
    if h.job.model.name == "gan":   # the pair's losses on its own held-out rows; no classifier to score
        from orchestrator.core.gan import evaluate_gan

        res = evaluate_gan(model, X, y, seed=h.job.seed * 100_003 + h.partition_id)
        metrics = {PARTITION_KEY: h.partition_id, P.NUM_EXAMPLES: int(len(y)),
                   **{f"{P.EVAL_PREFIX}{k}": v for k, v in res.items()}}
        return Message(content=RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=message)
    own = None
    if personal.method(h) in personal.STATEFUL:   # its personal model as of this round (else the global)
        own = personal.personal_model(h, model, context, message, int(message.content[P.CONFIG][P.SERVER_ROUND]))
        own = own or model
        own.eval()
    model.eval()
    with torch.no_grad():
        out = forward(model, X) if len(y) else None
        own_out = forward(own, X) if own is not None and len(y) else None
    return evaluation_reply(h, message, _objective(h, model, message), out, y,
                            personal_out=own_out if own is not None else False)


def _sums(h: Hospital, objective: Objective, out, y, summed: np.ndarray | None = None) -> ConfigRecord:
    """Counts the server pools into exact metrics: confusion counts, regression error sums, or
    multi-label counts (`training.pooled_sums`)."""
    values = pooled_sums(out, y, len(h.schema.classes), objective) if summed is None else summed
    return ConfigRecord({P.SUMS_KEY[P.SUMS_RECORD[h.schema.task]]: np.asarray(values).ravel().tolist()})


def evaluation_reply(h: Hospital, message: Message, objective: Objective, out: torch.Tensor | None,
                     y: torch.Tensor, personal_out=False, scores: tuple[dict, np.ndarray] | None = None) -> Message:
    """What a hospital sends back from the global model's outputs `out` on its test rows `y` (and,
    unless `personal_out` is False, its personal model's, as personal_* and their own sums).
    `scores`: `scored(out, y, objective)` and the pooled sums, when already computed (the
    vectorized engine scores every hospital's rows together: `core.stacked.scored_stacked`)."""
    res, summed = (scored(out, y, objective), None) if scores is None else (dict(scores[0]), scores[1])
    metrics = {PARTITION_KEY: h.partition_id, P.NUM_EXAMPLES: res.pop("num_examples")}
    if P.UNIFORM_WEIGHT in message.content[P.CONFIG]:  # central DP weights every hospital alike
        metrics[P.UNIFORM_WEIGHT] = 1.0
    # every hospital sends the same keys (Flower aggregates only uniform records); NaN = undefined
    # here, e.g. AUROC on a test split holding one class
    metrics.update({f"{P.EVAL_PREFIX}{k}": float(v) for k, v in res.items()})
    # sums the server pools into the consortium's exact metrics (counts, never rows)
    records: dict = {P.SUMS_RECORD[h.schema.task]: _sums(h, objective, out, y, summed)}
    if personal_out is not False:
        own = scored(personal_out, y, objective)
        own.pop("num_examples")
        metrics.update({f"{P.PERSONAL_PREFIX}{k}": float(v) for k, v in own.items()})
        records[P.PERSONAL_SUMS] = _sums(h, objective, personal_out, y)
    records[P.METRICS] = metric_record(metrics)
    return Message(content=Records(records), reply_to=message)
