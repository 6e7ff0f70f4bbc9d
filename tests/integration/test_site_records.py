"""Site policies, ledgers and audit logs of simulated hospitals (`federated.sites`): a data scientist
meets the hospitals' refusals before deployment, and a sweep's trials each spend at every hospital."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.conftest import CONFIGS, run_cli

pytestmark = pytest.mark.integration


def test_a_sweeps_trials_each_spend_and_a_run_past_the_budget_fails_listing_every_refusal(store, tmp_path):
    from clients import audit
    from clients.ledger import Ledger, epsilon
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "policy.yaml").write_text("privacy: {dp: local, epsilon_budget: 1000}\nmin_count: 5\n")
    common = [f"tracking.uri={store}", f"federated.sites={sites}", "federated.num_clients=2", "federated.rounds=2",
              "federated.dp={mode: local, noise_multiplier: 1.0}", "sweep.space={train.optimizer.lr: [0.01, 0.05]}",
              "sweep.register_best=false", "tracking.register_model=null", "federated.strategy={name: fedavg}"]
    sweep = run_job(load_job(CONFIGS / "sweep_federated.yaml", common))
    client = MlflowClient(store)
    trials = {c.info.run_id for c in client.search_runs(
        [client.get_run(sweep.run_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{sweep.run_id}'")}
    assert len(trials) == 2
    folders = sorted(p for p in sites.iterdir() if p.is_dir())
    assert len(folders) == 2
    totals = []
    for site in folders:
        book = Ledger(site / "ledger.db")
        (dataset,) = {r["dataset"] for r in book.summary()}
        assert {r["run"] for r in book.summary()} == trials           # each trial spent, under its own run id
        assert all(r["rounds"] == 2 for r in book.summary())
        per_trial = [epsilon(book.releases(dataset, t), 1e-5) for t in trials]
        totals.append(epsilon(book.releases(dataset), 1e-5))
        assert max(per_trial) < totals[-1] <= sum(per_trial)          # composed across the trials
        assert audit.verify(site / "audit.jsonl")[1] == []

    # the hospitals' IT lowers the budget below what one more run would take: the run fails, every refusal named
    (sites / "policy.yaml").write_text(f"privacy: {{dp: local, epsilon_budget: {min(totals) * 1.01}}}\nmin_count: 5\n")
    proc = run_cli("run", str(CONFIGS / "sweep_federated.yaml"), "kind=federated", "sweep=null", *common[:5], "explain.enabled=false",
                   "federated.strategy={name: fedavg}", cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:] + str([(s.name, Ledger(s / "ledger.db").summary()) for s in folders])
    said = proc.stdout + proc.stderr
    assert said.count("refuses: epsilon") == 2 and "would pass its budget" in said and "Traceback" not in said, said
    failed = client.search_runs([client.get_run(sweep.run_id).info.experiment_id],
                                filter_string="attributes.status = 'FAILED'")
    assert any("would pass its budget" in r.data.tags.get("site.refusals", "") for r in failed)
    report = audit.report(folders[0] / "audit.jsonl", next(iter(trials)))
    assert "epsilon" in report and "k=5" in report and "train" in report
