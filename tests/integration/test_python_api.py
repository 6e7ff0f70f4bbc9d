"""The Python API (`from orchestrator import run, validate`), the example script that uses it, and
the job spec as JSON Schema (`consortium schema`), which every shipped config satisfies."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import CONFIGS, ROOT, run_cli

pytestmark = pytest.mark.integration


def test_validate_returns_the_spec_and_raises_what_is_wrong():
    from orchestrator import ConfigError, DataError, validate

    job = validate(CONFIGS / "hospitals_fedavg.yaml", overrides=["federated.rounds=3"])
    assert job.federated.rounds == 3 and job.kind == "federated"
    with pytest.raises(ConfigError, match="federated.rounds"):
        validate(CONFIGS / "hospitals_fedavg.yaml", overrides=["federated.rounds=zero"])
    with pytest.raises(ConfigError, match="no such file"):
        validate("configs/no-such-job.yaml")
    raw = yaml.safe_load((CONFIGS / "heart_disease_sites.yaml").read_text())
    raw["data"]["path"] = "/nonexistent/heart"
    with pytest.raises(DataError, match="/nonexistent/heart"):
        validate(raw)
    assert raw["data"]["path"] == "/nonexistent/heart"  # the caller's dict is left as it was


def test_run_without_tracking_returns_final_metrics_and_history():
    from orchestrator import run

    result = run(CONFIGS / "hospitals_fedavg.yaml",
                 overrides=["federated.rounds=3", "federated.engine=inline", "tracking.enabled=false",
                                "tracking.register_model=null"])
    assert set(result.final) >= {"eval/accuracy", "central/accuracy"}
    assert [s for s, _ in sorted(result.history["eval/accuracy"])] == [1, 2, 3]
    assert result.values("central/accuracy")[-1] == pytest.approx(result.final["central/accuracy"])
    assert not any(k.startswith("hospital_") for k in result.history)


def test_the_example_script_runs_a_tracked_job_and_plots_it(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "examples" / "python_api.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "caught: federated.rounds" in out.stdout and "models:/hospitals-mlp/1" in out.stdout
    assert (tmp_path / "history.png").stat().st_size > 5_000
    assert out.stderr.strip() == "", out.stderr[-2000:]  # nothing of MLflow's, Flower's or torch's on the console


def test_schema_command_prints_the_job_schema_every_config_satisfies(tmp_path):
    import jsonschema

    out = run_cli("schema", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert out.stdout == (CONFIGS / "schema.json").read_text()  # the file editors use is the same
    jsonschema.Draft202012Validator.check_schema(schema)
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert len(configs) >= 15
    for path in configs:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = yaml.safe_load((CONFIGS / "hospitals_fedavg.yaml").read_text())
    bad["federated"]["rounds"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_init_on_the_heart_directory_writes_a_config_that_validates_and_runs(tmp_path):
    out = run_cli("init", "heart", "--data", str(CONFIGS / "data" / "heart_disease"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 hospitals, one per CSV" in out.stdout and "next: consortium run" in out.stdout
    job = yaml.safe_load((tmp_path / "heart.yaml").read_text())
    assert job["data"]["target"] == "target" and job["federated"]["partition"]["name"] == "natural"
    assert (tmp_path / "heart.yaml").read_text().splitlines()[1] == "# yaml-language-server: $schema=consortium.schema.json"
    assert "federated" in json.loads((tmp_path / "consortium.schema.json").read_text())["properties"]
    ran = run_cli("run", "heart.yaml", "federated.rounds=2", "federated.engine=inline", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "models:/heart/1" in ran.stdout
    again = run_cli("init", "heart", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr


def test_init_guesses_the_label_of_a_single_csv_or_asks_for_it(tmp_path):
    import pandas as pd
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True).frame.rename(columns={"target": "Outcome"})
    d.to_csv(tmp_path / "clinic.csv", index=False)
    out = run_cli("init", "clinic", "--data", "clinic.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load((tmp_path / "clinic.yaml").read_text())
    assert job["data"]["target"] == "Outcome" and job["model"]["head"] == "linear"  # many distinct values
    assert job["federated"]["num_clients"] == 5
    pd.DataFrame({"a": [1, 2, 3], "b": [0, 1, 0]}).to_csv(tmp_path / "odd.csv", index=False)
    out = run_cli("init", "odd", "--data", "odd.csv", cwd=tmp_path)
    assert out.returncode == 2 and "--target" in out.stderr and not (tmp_path / "odd.yaml").exists()
