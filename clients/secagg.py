"""The hospital under SecAgg+: the same handlers, in Flower's legacy records, behind `secaggplus_mod`.

Flower's SecAgg+ runs in its legacy workflow API: instructions arrive as FitIns/EvaluateIns records
and `secaggplus_mod` masks the FitRes this hospital returns, so the server only ever sees the sum of
masked updates. Only trainable parameters travel (in `trainable` order); the buffers the server set
(input scaling) come in the config, as they are not updates and must not be masked.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.handlers import evaluate, train
from orchestrator.core import protocol as P


# Flower's SecAgg+ runs in its legacy workflow API: instructions arrive as FitIns/EvaluateIns records
# and Flower's `secaggplus_mod` masks the FitRes this hospital returns, so the server only ever sees
# the sum of masked updates. Only trainable parameters travel (in `trainable` order); the buffers
# the server set (input scaling) come in the config, as they are not updates and must not be masked.
def secagg_mods():
    from flwr.client.mod import secaggplus_mod

    return [secaggplus_mod]


def _legacy_in(message: Message, prefix: str) -> tuple[Message, list[str]]:
    from flwr.compat.common.recorddict_compat import recorddict_to_evaluateins, recorddict_to_fitins
    from flwr.common import parameters_to_ndarrays

    ins = (recorddict_to_fitins if prefix == "fitins" else recorddict_to_evaluateins)(message.content, True)
    config = ConfigRecord(dict(ins.config))
    names = json.loads(str(config[P.TRAINABLE]))
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in json.loads(str(config[P.BUFFERS])).items()}
    state.update({k: torch.from_numpy(a.copy()) for k, a in zip(names, parameters_to_ndarrays(ins.parameters))})
    inner = copy.copy(message)  # same metadata (a new Message would need the task identity of a server)
    inner.content = RecordDict({P.ARRAYS: ArrayRecord(state), P.CONFIG: config})
    return inner, names


def _scalars(record: MetricRecord) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def secagg_train(message: Message, context: Context) -> Message:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    inner, names = _legacy_in(message, "fitins")
    reply = train(inner, context)
    state = reply.content[P.ARRAYS].to_torch_state_dict()
    metrics = _scalars(reply.content[P.METRICS])
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([state[k].numpy() for k in names]),
                 int(metrics[P.NUM_EXAMPLES]), metrics)
    # secaggplus_mod quantises this reply with stochastic rounding drawn from numpy's global
    # generator: seeded from (job seed, round, hospital), a seeded SecAgg+ run repeats exactly (the
    # masks cancel in the sum whatever their randomness)
    job_seed = json.loads(str(inner.content[P.CONFIG][P.JOB]))["seed"]
    np.random.seed([int(job_seed), int(inner.content[P.CONFIG][P.SERVER_ROUND]), int(metrics[P.PARTITION_ID])])
    return Message(fitres_to_recorddict(res, True), reply_to=message)


def secagg_evaluate(message: Message, context: Context) -> Message:
    from flwr.common import Code, EvaluateRes, Status
    from flwr.compat.common.recorddict_compat import evaluateres_to_recorddict

    inner, _ = _legacy_in(message, "evaluateins")
    reply = evaluate(inner, context)
    metrics = _scalars(reply.content[P.METRICS])
    for name, rec in reply.content.config_records.items():  # confusion counts / regression sums
        metrics.update({f"{name}_{i}": float(v) for i, v in enumerate(next(iter(rec.values())))})
    loss = metrics.get("eval_loss", float("nan"))
    res = EvaluateRes(Status(Code.OK, ""), float(loss), int(metrics[P.NUM_EXAMPLES]), metrics)
    return Message(evaluateres_to_recorddict(res), reply_to=message)
