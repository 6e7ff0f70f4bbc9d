"""Strategies beyond FedAvg, in the real simulation: each one converges on the breast-cancer hospitals."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("strategy", ["fedprox", "krum"])  # fedadam @pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "krum"]) co.: built and configured in unit tests
def test_strategy_converges_on_the_hospitals(strategy, store):
    from orchestrator.loading import load_job
    from orchestrator.runner import run_job

    job = load_job(CONFIGS / "hospitals_fedavg.yaml",
                   [f"tracking.uri={store}", f"federated.strategy.name={strategy}", "federated.rounds=8",
                    "federated.num_clients=5", "tracking.log_model=false"])
    result = run_job(job)
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["strategy"] == strategy
    assert result.final["central/accuracy"] >= 0.9 and result.final["eval/accuracy"] >= 0.9
    history = MlflowClient(store).get_metric_history(result.run_id, "central/accuracy")
    first = min(history, key=lambda m: m.step)
    assert result.final["central/accuracy"] > first.value  # it learned
