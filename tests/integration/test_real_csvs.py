"""A hospital's real export: text (categorical) columns agreed through the hospitals' counts,
identifier and date columns refused with the key that drops them, `data.features`, and the raw UCI
heart files read as they are (`data.columns`, `data.na_values`, `data.relabel`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, run_cli

SETS = {"north": ["F", "M"], "south": ["F", "M", "X"], "east": ["F", "M", "female"]}


@pytest.fixture
def exports(tmp_path):
    """Three hospitals' exports: an id, a date, age, sex and smoker as text; different sex values each."""
    rng = np.random.default_rng(0)
    d = tmp_path / "sites"
    d.mkdir()
    for h, (site, cats) in enumerate(SETS.items()):
        n = 120
        sex, smoker = rng.choice(cats, n), rng.choice(["yes", "no"], n)
        age = rng.normal(55, 10, n).round()
        y = ((smoker == "yes") & (age > 50)) | ((sex == "M") & (age > 60))
        df = pd.DataFrame({"patient_id": [f"P{h}{i:04d}" for i in range(n)],
                           "admitted": pd.date_range("2020-01-01", periods=n).strftime("%Y-%m-%d"),
                           "age": age, "sex": sex, "smoker": smoker, "outcome": y.astype(int)})
        df.loc[3, "smoker"] = None
        df.to_csv(d / f"{site}.csv", index=False)
    return d


def _job(d, *extra):
    return [str(CONFIGS / "heart_disease_sites.yaml"), f"data.path={d}", "data.target=outcome",
            "federated.engine=inline", "federated.rounds=8", *extra]


def test_identifier_and_date_columns_are_refused_with_the_key_that_drops_them(exports, tmp_path):
    proc = run_cli("validate", *_job(exports), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msg = " ".join(proc.stderr.split())
    assert "column 'patient_id' looks like an identifier" in msg and "data.drop: [patient_id]" in msg, msg
    assert "column 'admitted' holds dates" in msg and "data.drop: [admitted]" in msg, msg
    assert "Traceback" not in proc.stderr
    wrong = run_cli("validate", *_job(exports, "data.drop=[patient_id, admitted, weight]"), cwd=tmp_path)
    assert wrong.returncode == 2 and "data.drop: ['weight'] not among the file's columns" in wrong.stderr


def test_text_columns_are_agreed_from_counts_trained_on_and_the_model_takes_raw_text(exports, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = run_cli("run", *_job(exports, "data.drop=[patient_id, admitted]", f"tracking.uri={uri}",
                                "tracking.register_model=export-model", "--json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json

    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["final"]["eval/accuracy"] >= 0.85, result["final"]
    params = MlflowClient(uri).get_run(result["run_id"]).data.params
    # one vocabulary, the union of what the three hospitals hold (each reported only its counts)
    assert params["data.categories"] == "sex: F, M, X, female (+other); smoker: no, yes (+other)"
    assert params["data.num_features"] == "9"   # age; sex F, M, X, female, other; smoker no, yes, other
    export = tmp_path / "export.csv"
    pd.DataFrame({"age": [70, 40, 66], "sex": ["M", "F", "unknown"], "smoker": ["yes", "no", None]}).to_csv(
        export, index=False)
    served = run_cli("predict", result["registered"], str(export), f"--tracking-uri={uri}", cwd=tmp_path)
    assert served.returncode == 0, served.stdout + served.stderr
    answers = pd.read_csv(tmp_path / "export.predictions.csv")
    assert answers["prediction"].tolist()[:2] == [1, 0]   # the rule the labels follow
    assert np.allclose(answers[["probability_0", "probability_1"]].sum(1), 1.0)  # 'unknown' -> other: answered


def test_data_features_keeps_only_the_named_columns(exports, tmp_path):
    proc = run_cli("validate", *_job(exports, "data.features=[age, smoker]"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from orchestrator.core.data import load_source
    from orchestrator.spec.loading import load_job

    _, schema = load_source(load_job(CONFIGS / "heart_disease_sites.yaml",
                                     [f"data.path={exports}", "data.target=outcome", "data.features=[age, smoker]"]))
    assert schema.raw_columns == ("age", "smoker") and schema.features == ("age", "smoker=no", "smoker=yes",
                                                                           "smoker=other")


def test_the_raw_uci_files_load_as_they_are_and_equal_the_shipped_csvs():
    from orchestrator.core.data import load_source
    from orchestrator.spec.loading import load_job

    raw, s1 = load_source(load_job(CONFIGS / "heart_disease_raw.yaml", []))
    csv, s2 = load_source(load_job(CONFIGS / "heart_disease_sites.yaml", []))
    assert s1.features == s2.features and s1.classes == s2.classes == ("0", "1")
    assert [len(t.y) for t in raw] == [303, 294, 123, 200]
    for a, b in zip(raw, csv):
        assert np.array_equal(a.X, b.X, equal_nan=True) and np.array_equal(a.y, b.y), a.name


def test_the_deployment_census_agrees_one_vocabulary_from_each_hospitals_counts(exports):
    from clients.hospitals import describe_share
    from orchestrator.jobs.plan import plan_from_census
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "heart_disease_sites.yaml", [f"data.path={exports}", "data.target=outcome",
                                                          "data.drop=[patient_id, admitted]"])
    files = sorted(exports.glob("*.csv"))
    described = {i: describe_share(job, i, len(files), str(f)) for i, f in enumerate(files)}
    assert described[1]["categories"]["sex"].keys() == {"F", "M"}   # north: its own values, counted
    plan = plan_from_census(job, described)
    assert plan.schema.vocabulary == {"sex": ("F", "M", "X", "female"), "smoker": ("no", "yes")}


def test_init_leaves_out_the_identifier_and_date_columns_and_the_config_validates(exports, tmp_path):
    proc = run_cli("init", "exports-job", "--data", str(exports), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "exports-job.yaml").read_text()
    assert "drop: [patient_id, admitted]" in text and "target: outcome" in text
    checked = run_cli("validate", "exports-job.yaml", cwd=tmp_path)
    assert checked.returncode == 0 and "3 hospitals" in checked.stdout, checked.stdout + checked.stderr
