"""The hospital's answers to queries (the ClientApps route `query` messages here):
  round 0      per-feature observed count, sum and sum of squares of its training rows (input
               scaling) and its label histogram; before a schema is agreed (deployment) a
               description of its data
  attribute    after training, with no central split: integrated gradients on its own test rows
  personalize  after training: its personal model scored on its own test rows (clients.personal)
"""
from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import handlers as H
from clients import personal
from orchestrator.core import protocol as P
from orchestrator.core.models import moments, standardizer
from orchestrator.spec.job import JobSpec


def query(message: Message, context: Context) -> Message:
    if P.SCHEMA not in message.content[P.CONFIG]:
        return describe(message, context)
    if P.ATTRIBUTE in message.content[P.CONFIG]:
        return attribute(message, context)
    if P.PERSONALIZE in message.content[P.CONFIG]:
        return personalize(message, context)
    h = H._hospital(message, context)
    count, total, sumsq = moments(h.raw.X_train)
    stats = [count, total, sumsq]
    if h.schema.regression:  # the target's sums set the regression output's scale
        y = h.raw.y_train.astype(np.float64)
        stats.append(np.array([len(y), y.sum(), (y**2).sum()]))
        labels: list[int] = []
    elif h.schema.multilabel:   # images with each finding
        labels = np.asarray(h.raw.y_train).sum(0).astype(np.int64).tolist()
    else:   # a segmentation's: pixels of each label
        labels = np.bincount(np.asarray(h.raw.y_train).reshape(-1), minlength=len(h.schema.classes)).tolist()
    content = RecordDict({
        P.STATS: ArrayRecord(stats),
        P.METRICS: MetricRecord({P.PARTITION_ID: h.partition_id, P.NUM_EXAMPLES: len(h.raw.y_train)}),
        P.LABELS: ConfigRecord({"train": labels}),  # label histogram: counts only, no rows
    })
    return Message(content=content, reply_to=message)


def attribute(message: Message, context: Context) -> Message:
    """After training, with no central split: integrated gradients of the final model on this
    hospital's own test rows; only the mean |attribution| per input and the row count go back."""
    from orchestrator.core.attribution import integrated_gradients
    from orchestrator.core.models import standardizer

    h = H._hospital(message, context)
    model = H._model(h, message)
    mean = standardizer(model).mean.detach().cpu().numpy()
    _, _, X_test, _ = h.tensors(mean)
    values = integrated_gradients(model, X_test.numpy(), mean, not h.schema.regression)
    content = RecordDict({
        P.STATS: ArrayRecord([values.astype(np.float64)]),
        P.METRICS: MetricRecord({P.PARTITION_ID: h.partition_id, P.NUM_EXAMPLES: len(X_test)}),
    })
    return Message(content=content, reply_to=message)


def personalize(message: Message, context: Context) -> Message:
    """After the last round: this hospital's personal model (clients.personal: fine-tuned now, or
    the one its method kept through the rounds), scored on its own test rows; its weights go back
    only when the job says hospitals share them."""
    h = H._hospital(message, context)
    model = H._model(h, message)
    objective = H._objective(h, model, message)
    if personal.method(h) == "finetune":
        personal.finetune(h, model, objective)
    else:
        model = personal.personal_model(h, model, context, message, 10**9) or model
    _, _, X, y = h.tensors(standardizer(model).mean.numpy())
    model.eval()
    with torch.no_grad():
        out = model(X) if len(y) else None
    reply = H.evaluation_reply(h, message, objective, out, y)
    if h.job.federated.personalize.share_models:
        reply.content[P.ARRAYS] = ArrayRecord(model.state_dict())
    return reply


def describe(message: Message, context: Context) -> Message:
    """Before a schema is agreed (deployment engine): what this hospital's data is, never a row.
    A mistake in its data comes back as `error`, for the server to name this hospital."""
    from clients.hospitals import describe_share
    from orchestrator.spec.errors import UserError

    pid = int(context.node_config[P.PARTITION_ID])
    job = JobSpec.model_validate_json(str(message.content[P.CONFIG][P.JOB]))
    num = int(context.node_config.get(P.NUM_PARTITIONS, job.federated.num_clients or 1))
    data_path = context.node_config.get(P.DATA_PATH)
    try:
        found = {"description": json.dumps(describe_share(job, pid, num, str(data_path) if data_path else None))}
    except UserError as exc:
        from pathlib import Path

        from orchestrator.core.splits import hospital_name

        found = {"name": hospital_name(Path(str(data_path)).stem) if data_path else str(pid),
                 "source": exc.source, "problems": json.dumps(exc.problems)}
    content = RecordDict({P.METRICS: MetricRecord({P.PARTITION_ID: pid}), P.DESCRIPTION: ConfigRecord(found)})
    return Message(content=content, reply_to=message)
