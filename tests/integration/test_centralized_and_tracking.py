"""Centralized baseline beside the federated runs, and what a failed run leaves in MLflow."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration


def test_centralized_config_reaches_the_bar_on_the_same_held_out_split(store, fedavg_run):
    from orchestrator.spec.loading import load_job
    from orchestrator.jobs.runner import run_job

    job = load_job(CONFIGS / "centralized.yaml", [f"tracking.uri={store}"])
    result = run_job(job)
    print(f"\ncentralized: eval/accuracy={result.final['eval/accuracy']:.4f} wall={result.wall_s:.1f}s")
    assert result.final["eval/accuracy"] >= 0.95
    assert result.final["central/accuracy"] == result.final["eval/accuracy"]
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "centralized"
    assert len(client.get_metric_history(result.run_id, "eval/accuracy")) == 20
    assert result.registered == "models:/centralized-mlp/1"


def test_a_run_that_breaks_after_starting_is_failed_and_keeps_what_was_logged(store):
    from orchestrator.tracking.store import Tracker

    tracker = Tracker(store, "failures")
    with pytest.raises(RuntimeError, match="hospital exploded"):
        with tracker.run("breaks", {"kind": "federated"}) as run:
            run.log_params({"federated.rounds": 5})
            run.log_metrics({"eval/accuracy": 0.5}, step=1)
            run.flush()
            run.log_metrics({"eval/accuracy": 0.6}, step=2)  # buffered: must still be kept
            raise RuntimeError("hospital exploded")
    client = MlflowClient(store)
    (failed,) = client.search_runs([client.get_experiment_by_name("failures").experiment_id])
    assert failed.info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(failed.info.run_id, "eval/accuracy")] == [0.5, 0.6]
    assert failed.data.params["federated.rounds"] == "5"


def test_interrupted_run_is_marked_killed(store):
    from orchestrator.tracking.store import Tracker

    tracker = Tracker(store, "interrupts")
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("ctrl-c", {}) as run:
            run.log_metrics({"train/loss": 1.0}, step=1)
            raise KeyboardInterrupt
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name("interrupts").experiment_id])
    assert killed.info.status == "KILLED"
    assert killed.data.metrics["train/loss"] == 1.0
