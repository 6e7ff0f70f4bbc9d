"""Strategies from YAML: every name builds the right Flower strategy; aggregation order is fixed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from orchestrator.core import protocol as P
from orchestrator.core.models import build_model
from orchestrator.core.training import tensors, train_epochs
from orchestrator.spec.errors import ConfigError
from orchestrator.spec.loading import load_job
from orchestrator.spec.model import ModelSpec
from orchestrator.spec.train import TrainSpec
from strategies import fedavg
from strategies.base import NoUsableRepliesError, ObservedStrategy
from strategies.hospital import HospitalHook
from strategies.registry import MODULES, STRATEGIES, build_strategy

ROOT = Path(__file__).resolve().parents[2]


def strategy_of(**options):
    opts = STRATEGIES[options.get("name", "fedavg")].Options(**options)
    return build_strategy(opts, num_clients=10, fraction_fit=1.0, fraction_evaluate=1.0)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_name_builds_from_yaml(name):
    job = load_job(ROOT / "configs/hospitals_fedavg.yaml", [f"federated.strategy.name={name}"])
    strategy = build_strategy(job.federated.strategy, num_clients=10, fraction_fit=1.0, fraction_evaluate=1.0)
    assert isinstance(strategy, ObservedStrategy) and job.federated.strategy.name == name
    assert type(strategy) is type(build_strategy(job.federated.strategy, num_clients=3, fraction_fit=1.0,
                                                 fraction_evaluate=1.0))  # one class per strategy


def test_every_strategy_module_declares_its_options_hospital_half_and_builder():
    for module in MODULES:
        assert {"Options", "DECLARED", "build"} <= set(vars(module)), module.__name__
        hook = module.DECLARED.hospital
        assert isinstance(hook, HospitalHook) and all(isinstance(k, str) and k for k in hook.reads)
        assert module.__name__ == f"strategies.{module.Options.model_fields['name'].default}"
        for name, field in module.Options.model_fields.items():
            assert name == "name" or field.description, f"{module.__name__}.Options.{name} has no description"


def test_strategy_options_reach_flower():
    assert strategy_of(name="fedprox", mu=0.5).proximal_mu == 0.5
    adam = strategy_of(name="fedadam", server_lr=0.03, tau=1e-4, beta1=0.8, beta2=0.95)
    assert (adam.eta, adam.tau, adam.beta_1, adam.beta_2) == (0.03, 1e-4, 0.8, 0.95)
    assert strategy_of(name="trimmed_mean", beta=0.1).beta == 0.1
    mk = strategy_of(name="multi_krum", f=2, select=3)
    assert (mk.num_malicious_nodes, mk.num_nodes_to_select) == (2, 3)
    assert strategy_of(name="scaffold").server_lr == 1.0 and strategy_of(name="fedyogi").eta == 0.1


def test_fedprox_sends_mu_under_the_key_the_hospitals_read(_outside_a_flower_run):
    """The client reads protocol.PROXIMAL_MU; Flower's FedProx must write exactly that key."""
    from flwr.app import ConfigRecord

    class Grid:
        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, group_id=group_id)

    prox = strategy_of(name="fedprox", mu=0.25)
    messages = list(prox.configure_train(1, ArrayRecord([np.zeros(2, dtype=np.float32)]), ConfigRecord({}), Grid()))
    assert len(messages) == 10 and all(m.content[P.CONFIG][P.PROXIMAL_MU] == 0.25 for m in messages)


def test_an_option_of_another_strategy_is_an_error_that_names_its_owner():
    with pytest.raises(ConfigError, match=r"federated.strategy.mu: not used by 'fedavg' \(it belongs to fedprox\)"):
        load_job(ROOT / "configs/hospitals_fedavg.yaml", ["federated.strategy.mu=0.1"])


@pytest.fixture(autouse=True)
def _outside_a_flower_run(monkeypatch):
    """Messages carry the identity of the task that makes them; Flower sets it inside a run."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def test_a_dumped_spec_loads_again_for_every_strategy():
    from orchestrator.spec.job import JobSpec

    for name in STRATEGIES:
        job = load_job(ROOT / "configs/hospitals_fedavg.yaml", [f"federated.strategy.name={name}"])
        assert JobSpec.model_validate_json(job.model_dump_json()) == job


def _reply(pid: int, value: float, n: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord([np.full(3, value, dtype=np.float32)]),
                          "metrics": MetricRecord({"partition-id": pid, "num-examples": n, "train_loss": value})})
    return Message(content=content, dst_node_id=0, message_type="train")


def test_aggregation_does_not_depend_on_the_order_replies_arrive_in():
    rng = np.random.default_rng(0)
    values = rng.normal(size=10).astype(np.float32) * 1e3
    replies = [_reply(i, float(v), int(n)) for i, (v, n) in enumerate(zip(values, rng.integers(5, 50, 10)))]
    reports = []
    strategy = build_strategy(fedavg.Options(), num_clients=10, fraction_fit=1.0, fraction_evaluate=1.0,
                              listener=reports.append)
    a, _ = strategy.aggregate_train(1, replies)
    b, _ = strategy.aggregate_train(1, list(reversed(replies)))
    assert np.array_equal(a.to_numpy_ndarrays()[0], b.to_numpy_ndarrays()[0])
    assert sorted(reports[0].hospitals) == list(range(10))
    assert reports[0].hospitals[3]["train_loss"] == pytest.approx(float(values[3]))


def test_a_round_where_every_hospital_failed_stops_the_job():
    from flwr.app import Error

    strategy = build_strategy(fedavg.Options(), num_clients=2, fraction_fit=1.0, fraction_evaluate=1.0)
    failed = Message(Error(code=0, reason="hospital exploded"), reply_to=Message(RecordDict(), dst_node_id=1,
                                                                                  message_type="train"))
    with pytest.raises(NoUsableRepliesError, match="hospital exploded"):
        strategy.aggregate_train(1, [failed])


def test_fedprox_with_mu_zero_trains_exactly_like_plain_training_and_mu_pulls_towards_the_start():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def trained(mu):
        torch.manual_seed(0)
        model = build_model(ModelSpec(hidden=[8]), 5, 2)
        start = [p.detach().clone() for p in model.parameters()]
        train_epochs(model, *tensors(X, y), TrainSpec(), 5, seed=3, proximal_mu=mu)
        drift = sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start))
        return model, drift

    plain, drift0 = trained(0.0)
    again, _ = trained(0.0)
    pulled, drift_big = trained(10.0)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), again.parameters()))
    assert drift_big < drift0 / 2
