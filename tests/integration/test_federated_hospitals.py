"""The federated-hospitals slice end to end: real Flower simulation, real Ray, real MLflow."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, ROOT, run_cli

pytestmark = pytest.mark.integration


def test_shipped_fedavg_config_reaches_the_accuracy_bar(fedavg_run):
    final = fedavg_run["result"].final
    print(f"\nhospitals_fedavg: eval/accuracy={final['eval/accuracy']:.4f} "
          f"central/accuracy={final['central/accuracy']:.4f} wall={fedavg_run['wall']:.1f}s")
    assert final["eval/accuracy"] >= 0.94
    assert final["central/accuracy"] >= 0.94


def test_every_round_and_every_hospital_is_recorded_in_mlflow(fedavg_run):
    client = MlflowClient(fedavg_run["uri"])
    run = client.get_run(fedavg_run["result"].run_id)
    assert run.info.status == "FINISHED"
    for key in ("eval/accuracy", "eval/loss", "train/loss", "central/accuracy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert set(range(1, 21)) <= set(steps), key
    for h in range(10):
        assert len(client.get_metric_history(run.info.run_id, f"hospital_{h}/eval/accuracy")) == 20
        assert f"hospital_{h}/eval/num_examples" in run.data.metrics
    params = run.data.params
    assert params["federated.partition.alpha"] == "0.5" and params["federated.rounds"] == "20"
    assert params["train.optimizer.name"] == "sgd"
    tags = run.data.tags
    assert tags["kind"] == "federated" and tags["strategy"] == "fedavg" and tags["partition"] == "dirichlet"
    assert tags["dataset"] == "breast_cancer" and len(tags["git_commit"]) >= 7
    local = client.download_artifacts(run.info.run_id, "config/resolved.yaml", str(fedavg_run["dir"]))
    assert "rounds: 20" in open(local).read()


def test_each_run_registers_a_new_model_version(fedavg_run):
    client = MlflowClient(fedavg_run["uri"])
    versions = client.search_model_versions("name='hospitals-mlp'")
    assert fedavg_run["result"].registered == f"models:/hospitals-mlp/{versions[0].version}"
    assert versions[0].run_id == fedavg_run["result"].run_id


def test_registered_model_reproduces_logged_accuracy_in_a_fresh_process(fedavg_run):
    result = fedavg_run["result"]
    script = textwrap.dedent(f"""
        import json, mlflow, mlflow.pytorch, torch
        from orchestrator.spec.loading import load_job
        from orchestrator.jobs.plan import plan_data
        mlflow.set_tracking_uri({fedavg_run['uri']!r})
        model = mlflow.pytorch.load_model({result.registered!r})
        plan = plan_data(load_job({str(CONFIGS / 'hospitals_fedavg.yaml')!r}))
        X = torch.as_tensor(plan.central.X_test)
        with torch.no_grad():
            pred = model(X).argmax(1).numpy()
        print(json.dumps({{"accuracy": float((pred == plan.central.y_test).mean()), "n": len(pred)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert reloaded["n"] == 113  # 20% of 569, stratified
    assert reloaded["accuracy"] == pytest.approx(result.final["central/accuracy"], abs=1e-9)


def test_natural_silos_from_a_directory_of_csvs_with_empty_cells(tmp_path):
    # Three small hospitals, named after their files, each with some empty cells.
    import numpy as np

    sites = tmp_path / "sites"
    sites.mkdir()
    rng = np.random.default_rng(0)
    for name, shift in [("north", 0.0), ("south-west", 0.5), ("east", -0.5)]:
        X = rng.normal(shift, 1.0, size=(40, 3))
        y = (X[:, 0] + X[:, 1] > 2 * shift).astype(int)
        lines = ["age,bp,chol,outcome"]
        for i, (row, label) in enumerate(zip(X, y)):
            cells = [f"{v:.3f}" for v in row]
            if i % 7 == 3:
                cells[i % 3] = ""
            lines.append(",".join(cells + [str(label)]))
        (sites / f"{name}.csv").write_text("\n".join(lines) + "\n")
    job = tmp_path / "silos.yaml"
    job.write_text(textwrap.dedent(f"""
        name: silos
        kind: federated
        data: {{source: csv, path: {sites}, target: outcome, test_fraction: 0.25}}
        model: {{name: mlp, hidden: [16]}}
        train: {{optimizer: {{name: adam, lr: 0.02}}, epochs: 2}}
        federated: {{num_clients: null, rounds: 4, partition: {{name: natural}}, engine: inline}}
        tracking: {{experiment: silos, register_model: silo-model}}
    """))

    out = run_cli("run", str(job), cwd=tmp_path)

    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "models:/silo-model/1" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("silos").experiment_id])[0]
    assert run.info.status == "FINISHED"
    for name in ("east", "north", "south-west"):
        assert len(client.get_metric_history(run.info.run_id, f"hospital_{name}/eval/accuracy")) == 4
        assert f"hospital_{name}/train/loss" in run.data.metrics
    assert run.data.params["federated.num_clients"] == "3"
    assert int(run.data.params["data.missing_cells"]) > 0
    assert "own training rows" in run.data.params["data.imputation"]
    assert "central/accuracy" not in run.data.metrics  # no server-side data for natural silos
