"""Secure aggregation: the federated rounds run in Flower's SecAgg+ workflow.

SecAgg+ (Bell et al., 2020) lives in Flower's legacy workflow API: a `DefaultWorkflow` whose fit
step is `SecAggPlusWorkflow`, a legacy `FedAvg`, and `secaggplus_mod` on every hospital
(`clients.client_app.secagg_app`). Each hospital quantises its weighted update, adds pairwise masks
agreed with its neighbours and a private mask, and secret-shares the masks' seeds; the server only
learns the sum, from which the masks cancel. Our census (a plain query message) runs before it.

Only trainable parameters are aggregated (the values SecAgg+ quantises must lie within
`clipping_range`); buffers the server set, such as the input scaling, travel in the config.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord

from orchestrator.core.protocol import SUMS_KEY
from orchestrator.spec.job import JobSpec
from strategies.base import PARTITION_KEY, RoundReport


def _legacy_strategy(listener):
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    class ObservedLegacyFedAvg(LegacyFedAvg):
        """Legacy FedAvg that reports every round to the orchestrator, like strategies.base does."""

        def aggregate_fit(self, server_round, results, failures):
            report = RoundReport(server_round, "train")
            for _, res in results:
                m = dict(res.metrics)
                report.hospitals[int(m.get(PARTITION_KEY, -1))] = {
                    k: float(v) for k, v in m.items() if k != PARTITION_KEY and isinstance(v, (int, float))}
            report.failures = [str(f) for f in failures]
            listener(report)
            return super().aggregate_fit(server_round, results, failures)

        def aggregate_evaluate(self, server_round, results, failures):
            report = RoundReport(server_round, "evaluate")
            for _, res in results:
                m = dict(res.metrics)
                pid = int(m.get(PARTITION_KEY, -1))
                extras: dict = {}
                for name, key in SUMS_KEY.items():
                    idx = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in m.items() if k.startswith(f"{name}_"))
                    if idx:
                        extras[name] = {key: [v for _, v in idx]}
                report.extras[pid] = extras
                report.hospitals[pid] = {k: float(v) for k, v in m.items() if k != PARTITION_KEY
                                         and not k.startswith(tuple(f"{n}_" for n in SUMS_KEY))
                                         and isinstance(v, (int, float))}
            report.failures = [str(f) for f in failures]
            listener(report)
            return super().aggregate_evaluate(server_round, results, failures)

    return ObservedLegacyFedAvg


def run_secagg(grid, context: Context, job: JobSpec, model: torch.nn.Module, config: ConfigRecord, listener,
               central_eval: Callable[[int, ArrayRecord], MetricRecord | None], max_weight: float) -> None:
    """Run job.federated.rounds SecAgg+ rounds from `model`; leaves the final weights in `model`."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    fed, sa = job.federated, job.federated.secagg
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    buffers = {k: v.tolist() for k, v in model.state_dict().items() if k not in trainable}
    base = {**dict(config), "trainable": json.dumps(trainable), "buffers": json.dumps(buffers)}
    n = len(list(grid.get_node_ids()))

    def to_record(ndarrays) -> ArrayRecord:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state.update({k: torch.from_numpy(np.asarray(a).copy()) for k, a in zip(trainable, ndarrays)})
        return ArrayRecord(state)

    def evaluate_fn(server_round: int, ndarrays, _config):
        record = to_record(ndarrays)
        model.load_state_dict(record.to_torch_state_dict())
        res = central_eval(server_round, record)
        if res is None:
            return None
        return float(res.get("loss", float("nan"))), {k: float(v) for k, v in res.items()}

    strategy = _legacy_strategy(listener)(
        fraction_fit=1.0, fraction_evaluate=fed.fraction_evaluate, min_fit_clients=n, min_evaluate_clients=1,
        min_available_clients=n, evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda r: {**base, "server-round": r},
        on_evaluate_config_fn=lambda r: {**base, "server-round": r},
        initial_parameters=ndarrays_to_parameters([model.state_dict()[k].numpy() for k in trainable]),
        fit_metrics_aggregation_fn=lambda _: {}, evaluate_metrics_aggregation_fn=lambda _: {},
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=fed.rounds,
                                                                 round_timeout=fed.round_timeout_s),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=sa.num_shares, reconstruction_threshold=sa.reconstruction_threshold, max_weight=max_weight,
        clipping_range=sa.clipping_range, quantization_range=sa.quantization_range, timeout=fed.round_timeout_s))
    workflow(grid, legacy)
