"""The coordinator: Consortium's Flower ServerApp, at module level (`app`), as Flower's engines load it.

One federated job on the server side is a `Rounds`: round 0 asks every hospital for aggregates
(`census`), then `rounds` rounds of the configured strategy; after each, federated evaluation on
every hospital's test split and, where the data has one, the global model on the server's central
held-out split (`central_eval`, where the round's metrics are flushed and the round checkpointed).

Which job `app` runs comes from its context: the `Rounds` bound in this process by the
simulation and inline engines (`bound`), or the run config `job` (JSON) in Flower's deployment
engine, where the ServerApp runs in a process of its own (`deployed.serve`).
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from orchestrator.adapters.flower import to_torch_state
from orchestrator.core.models import image_channels, standardizer
from orchestrator.core.protocol import CLASS_WEIGHTS, JOB, RUN, SCHEMA, STATE_DIR, UNIFORM_WEIGHT, from_state
from orchestrator.core.training import Objective, balanced_weights, evaluate, tensors
from orchestrator.jobs.federated import listeners
from orchestrator.jobs.federated.census import census, wait_for_nodes
from orchestrator.jobs.federated.checkpoints import RoundWriter
from orchestrator.jobs.federated.listeners import RoundEnd, RoundListener
from orchestrator.jobs.federated.rounds import RoundLogger
from orchestrator.jobs.federated.stopping import BestRound, StopRounds
from orchestrator.jobs import progress
from strategies.base import evaluates_in, sample_size
from strategies.registry import build_strategy

if TYPE_CHECKING:
    from orchestrator.core.dataplan import DataPlan
    from orchestrator.spec.job import JobSpec
    from orchestrator.tracking.protocol import Run


@contextmanager
def frozen_heap():
    """What the job holds before its rounds (the hospitals' rows and state, in the in-process engines)
    kept out of the garbage collector's full collections while they run: each one walks every
    object (bench/README.md, "figures behind the code"). Unfrozen after, so nothing stays uncollectable."""
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Rounds:
    """The server side of one federated job: what it starts from and what it records into."""

    job: JobSpec
    plan: DataPlan
    run: Run
    model: torch.nn.Module
    ckpt_dir: Path
    copied: set[str] = field(default_factory=set)   # layers taken from a source model (transfer)
    done: int = 0                              # rounds already done (resume)
    saved_model: dict | None = None
    saved_strategy: dict = field(default_factory=dict)
    first_round_s: float | None = None
    first_round_at: float | None = None
    label_counts: np.ndarray | None = None
    attributions: tuple | None = None          # (mean |attribution| per input, rows, hospitals), hospital-side
    best: BestRound | None = None              # the best round so far (early stopping, cross-site validation)
    final_metrics: dict = field(default_factory=dict)   # early stopping: the restored round's metrics
    on_round: Callable[[int, dict], Any] | None = None   # (round, metrics) after each round: a sweep's trial
    extra_listeners: list[RoundListener] = field(default_factory=list)   # the job's own (orchestrator.run)
    crossval: dict | None = None               # federated.crossval: {site: {model: {metric: value}}}
    stopped_arrays: Any = None                 # the global model of the round a listener stopped at

    def __post_init__(self):
        self.logger = RoundLogger(self.run, dict(zip(self.plan.pids(), self.plan.hospitals)),
                                  self.plan.num_classes, self.plan.task, self.plan.schema.classes)
        self.writer = RoundWriter()
        self.strategy: Any = None
        central = self.plan.central
        # a GAN has no classifier to score centrally: its worth is measured at the end (synthetic)
        self._central = tensors(central.X_test, central.y_test) if central and self.job.model.name != "gan" else None
        self.best = BestRound.of(self.job, central is not None)
        self.listeners: list[RoundListener] = [*listeners.standard(self, self.on_round), *self.extra_listeners]

    def central_eval(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by Flower at the very end of every round: the global model on the server's
        held-out rows, then the round's end to every listener (`listeners`)."""
        server_round += self.done
        if server_round == self.done and self.done > 0:
            return None  # a resumed run: round `done` was evaluated before the interruption
        fed = self.job.federated
        end = RoundEnd(server_round, fed.rounds, arrays,
                       evaluated=server_round == 0 or evaluates_in(server_round, fed.evaluate_every, fed.rounds))
        res = None
        if self._central is not None and end.evaluated:
            self.model.load_state_dict(to_torch_state(arrays))
            objective = Objective.of(self.job, self.plan.num_classes, None, self.model, self.plan.schema.classes)
            r = {k: v for k, v in evaluate(self.model, *self._central, objective).items() if k != "num_examples"}
            end.metrics.update({f"central/{k}": v for k, v in r.items()})
            res = MetricRecord({k: float(v) for k, v in r.items() if not np.isnan(v)})
        for listener in self.listeners:
            listener.round_end(end)
        if end.stop:   # early stopping or a job's own listener: the model of this round is the final one
            self.stopped_arrays = arrays
            raise StopRounds(server_round)
        return res

    def personalize(self, grid: Grid, nodes: list[int], config: ConfigRecord, final: ArrayRecord) -> dict:
        """federated.personalize: each hospital adapts the final model to its own rows; its scores logged."""
        from orchestrator.jobs.federated.personal import log_personal, personalize

        fed = self.job.federated
        found = personalize(grid, nodes, config, final, dict(zip(self.plan.pids(), self.plan.hospitals)),
                            self.plan.num_classes, fed.round_timeout_s)
        log_personal(self.run, found, fed.rounds, self.plan.task, fed.personalize.share_models,
                     self.plan.schema.classes)
        return {f"personal_{name}": arrays for name, (_, _, arrays) in found.items() if arrays is not None}

    def cross_validate(self, grid: Grid, nodes: list[int], config: ConfigRecord, final: ArrayRecord,
                       personal: dict) -> None:
        """federated.crossval: the final and the best round's global models (and the personal ones
        hospitals shared) at every hospital."""
        from orchestrator.jobs.crossval import from_grid

        models = {"global": final}
        best = self.best
        if best is not None and best.state is not None and best.round not in (self.job.federated.rounds,
                                                                              best.stopped) and not self.final_metrics:
            models[f"best_round_{best.round}"] = best.best_arrays()
        models.update(personal)
        names = dict(zip(self.plan.pids(), self.plan.hospitals))
        self.crossval = from_grid(grid, nodes, config, models, names, self.job.federated.round_timeout_s)

    def config(self) -> ConfigRecord:
        """What every message tells the hospitals: the job, the agreed schema, where state lives."""
        config = ConfigRecord({JOB: self.job.model_dump_json(), SCHEMA: json.dumps(self.plan.schema.to_dict()),
                               RUN: self.run.run_id})
        if self.job.federated.engine != "deployment":  # one machine: the hospitals' state beside the run's
            config[STATE_DIR] = str(self.ckpt_dir / "hospitals")
        return config

    def main(self, grid: Grid, context: Context) -> None:
        job, plan, model, fed = self.job, self.plan, self.model, self.job.federated
        num_clients = len(plan.hospitals)
        progress.begin("round", fed.rounds, f"{job.name}: {fed.strategy.name}, {num_clients} hospitals")
        if self.done:
            progress.step("round", self.done, fed.rounds, self.run.last)
        config = self.config()
        nodes = wait_for_nodes(grid, fed.min_available(num_clients))
        found = census(grid, nodes, config, plan.num_features, plan.num_classes, plan.pids(), image_channels(job))
        self.logger.node_names = dict(zip(found.nodes, plan.hospitals))   # both in partition order
        self.label_counts = found.labels
        self._scale_from(found)
        weights = None
        if job.train.class_weights == "balanced":
            weights = balanced_weights(found.labels.sum(0))  # consortium-wide label counts
        elif job.train.class_weights:
            weights = list(job.train.class_weights)
        if weights is not None:
            config[CLASS_WEIGHTS] = json.dumps(weights)
            if not self.done:
                self.run.log_params({"train.class_weights_resolved": ",".join(f"{w:.4g}" for w in weights)})
        if fed.dp is not None and fed.dp.mode == "central":
            config[UNIFORM_WEIGHT] = 1
        if fed.secure:
            from orchestrator.jobs.federated.secagg import run_secagg

            run_secagg(grid, context, job, model, config, self.logger, self.central_eval,
                       max_weight=float(max(plan.hospital_sizes)))
            return
        strategy = build_strategy(fed.strategy, num_clients=num_clients, fraction_fit=fed.fraction_fit,
                                  fraction_evaluate=fed.fraction_evaluate, listener=self.logger, seed=job.seed,
                                  nodes=found.nodes, min_fit=fed.min_fit(num_clients),
                                  accept_failures=fed.accept_failures, dp=fed.dp,
                                  evaluate_every=fed.evaluate_every, last_round=fed.rounds,
                                  trainable=[k for k, p in model.named_parameters() if p.requires_grad])
        self.strategy = strategy
        initial = ArrayRecord(model.state_dict())
        if self.saved_model is not None:
            initial = from_state(self.saved_model)
            model.load_state_dict(initial.to_torch_state_dict())
            strategy.load_checkpoint_state(self.saved_strategy)
            strategy.round_offset = self.done
            strategy.replay(self.done, sample_size(num_clients, fed.fraction_fit, fed.min_fit(num_clients)),
                            num_clients)
        if fed.rounds - self.done <= 0:
            return
        try:
            with frozen_heap():
                final = strategy.start(grid=grid, initial_arrays=initial, num_rounds=fed.rounds - self.done,
                                       timeout=fed.round_timeout_s, train_config=config,
                                       evaluate_config=ConfigRecord(dict(config)), evaluate_fn=self.central_eval).arrays
        except StopRounds:
            final = self.stopped_arrays
        if fed.early_stopping is not None:
            final, self.final_metrics = self.best.finish(self.run, final)
        model.load_state_dict(final.to_torch_state_dict())
        personal = self.personalize(grid, found.nodes, config, final) if fed.personalize else {}
        if fed.crossval:
            self.cross_validate(grid, found.nodes, config, final, personal)
        deployed_images = job.data.source == "images" and fed.engine == "deployment"
        if self._central is None and job.explain.enabled and not deployed_images:
            # no rows at the server: each hospital attributes the final model on its own test rows
            # (a deployment's image hospitals send nothing image-shaped, not even a mean map)
            from orchestrator.jobs.federated.census import hospital_attributions

            self.attributions = hospital_attributions(grid, found.nodes, config, final,
                                                      fed.round_timeout_s)

    def _scale_from(self, found) -> None:
        """The model's input scaling (and a regression's output scaling) from the hospitals' sums."""
        if self.job.data.standardize and "input.mean" not in self.copied:
            standardizer(self.model).set(found.mean, found.scale)
        if self.plan.regression and "output.mean" not in self.copied:
            n, total, sumsq = found.target
            mean = total / max(n, 1.0)
            self.model.output.set(mean, float(np.sqrt(max(sumsq / max(n, 1.0) - mean**2, 0.0))))


_bound: dict[str, Rounds] = {}
_lock = threading.Lock()


@contextmanager
def bound(rounds: Rounds):
    """`app` runs `rounds` while this block lasts (the simulation and inline engines run the
    ServerApp in this process)."""
    with _lock:
        _bound["rounds"] = rounds
    try:
        yield
    finally:
        with _lock:
            _bound.pop("rounds", None)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = _bound.get("rounds")
    if rounds is None:  # Flower's deployment engine started this process for a submitted job
        from orchestrator.jobs.federated.deployed import serve

        serve(grid, context)
        return
    rounds.main(grid, context)
