"""The deployed coordinator's plan comes from what the hospitals say about their data, never from a file."""
from __future__ import annotations

import pytest

from clients.hospitals import describe_share
from orchestrator.jobs.plan import plan_data, plan_from_census
from orchestrator.spec.errors import ConfigError, DataError
from orchestrator.spec.loading import load_job
from tests.conftest import CONFIGS

HEART = CONFIGS / "heart_disease_sites.yaml"
SITES = ["cleveland", "hungarian", "switzerland", "va"]


def _job(*overrides):
    return load_job(HEART, [f"data.path={CONFIGS / 'data' / 'heart_disease'}", *overrides])


def test_the_hospitals_census_agrees_the_same_plan_as_reading_every_file():
    job = _job()
    described = {i: describe_share(job, i, 4, str(CONFIGS / "data" / "heart_disease" / f"{s}.csv"))
                 for i, s in enumerate(SITES)}
    census, files = plan_from_census(job, described), plan_data(job)
    assert census.schema == files.schema
    assert census.hospitals == files.hospitals == SITES
    assert census.hospital_sizes == files.hospital_sizes
    assert census.notes["data.missing_cells"] == files.notes["data.missing_cells"]
    assert census.central is None and census.pids() == [0, 1, 2, 3]


def test_a_missing_hospital_keeps_the_others_partition_ids():
    job = _job()
    described = {i: describe_share(job, i, 4, str(CONFIGS / "data" / "heart_disease" / f"{s}.csv"))
                 for i, s in enumerate(SITES) if i != 2}
    plan = plan_from_census(job, described)
    assert plan.hospitals == ["cleveland", "hungarian", "va"] and plan.pids() == [0, 1, 3]


def test_hospitals_whose_columns_differ_or_that_are_too_small_are_named():
    job = _job()
    a = describe_share(job, 0, 2, str(CONFIGS / "data" / "heart_disease" / "cleveland.csv"))
    b = dict(describe_share(job, 1, 2, str(CONFIGS / "data" / "heart_disease" / "va.csv")))
    b["features"] = [f for f in b["features"] if f != "chol"] + ["cholesterol"]
    b["rows"] = 3
    with pytest.raises(DataError) as exc:
        plan_from_census(job, {0: a, 1: b})
    text = exc.value.render()
    assert "hospital va: columns differ from hospital cleveland's (missing ['chol'], extra ['cholesterol'])" in text
    assert "hospital va: 3 rows" in text


def test_a_column_no_hospital_observed_is_refused():
    job = _job()
    described = {i: dict(describe_share(job, i, 2, str(CONFIGS / "data" / "heart_disease" / f"{s}.csv")))
                 for i, s in enumerate(["cleveland", "va"])}
    for d in described.values():
        d["observed"] = [0 if f == "ca" else n for f, n in zip(d["features"], d["observed"])]
    with pytest.raises(DataError, match="column 'ca' has no values at any hospital"):
        plan_from_census(job, described)


def test_a_deployment_job_names_its_superlink_and_ca():
    with pytest.raises(ConfigError, match="federated.superlink"):
        _job("federated.engine=deployment")
    with pytest.raises(ConfigError, match="root_certificates"):
        _job("federated.engine=deployment", "federated.superlink=127.0.0.1:9093")
    with pytest.raises(ConfigError, match="tracking.enabled"):
        _job("federated.engine=deployment", "federated.superlink=127.0.0.1:9093", "tracking.enabled=false",
             "federated.insecure=true")
    with pytest.raises(ConfigError, match="only used with engine deployment"):
        _job("federated.superlink=127.0.0.1:9093")
    with pytest.raises(ConfigError, match="no real hospital holds"):
        load_job(CONFIGS / "hospitals_fedavg.yaml", ["data.source=csv", "data.path=x.csv", "data.target=y",
                                                     "federated.engine=deployment", "federated.insecure=true",
                                                     "federated.superlink=h:1"])
    job = _job("federated.engine=deployment", "federated.superlink=127.0.0.1:9093", "federated.root_certificates=ca.pem")
    assert job.federated.engine == "deployment"


DEPLOYED = ["federated.engine=deployment", "federated.superlink=127.0.0.1:9099", "federated.root_certificates=ca.pem"]


def test_a_deployment_job_trains_on_the_hospitals_files_unless_it_names_a_demo_source(tmp_path):
    # the guide's snippet: no data section -> refused, naming the key to set
    guide = tmp_path / "job.yaml"
    guide.write_text("kind: federated\nfederated:\n  engine: deployment\n  superlink: 127.0.0.1:9099\n"
                     "  root_certificates: ca.pem\n  num_clients: 2\n")
    with pytest.raises(ConfigError) as info:
        load_job(guide)
    assert any(p.startswith("data.source: a deployment trains on the CSVs") for p in info.value.problems)
    # the hospitals' files: csv, and no path (the coordinator reads none); a demo source named explicitly
    assert load_job(CONFIGS / "heart_disease_sites.yaml", [*DEPLOYED, "data.path=null"]).data.path is None
    assert load_job(guide, ["data.source=breast_cancer"]).data.source == "breast_cancer"
    with pytest.raises(ConfigError, match="data.path: data.source 'csv' needs data.path"):   # elsewhere it is read
        load_job(CONFIGS / "heart_disease_sites.yaml", ["data.path=null"])


def test_a_hospital_started_on_its_own_file_refuses_a_demo_source():
    job = load_job(CONFIGS / "hospitals_fedavg.yaml", [*DEPLOYED, "data.source=breast_cancer", "federated.num_clients=2"])
    assert describe_share(job, 0, 2)["name"] == "0"   # a node without --data takes its demo share
    with pytest.raises(DataError) as info:
        describe_share(job, 0, 2, str(CONFIGS / "data" / "heart_disease" / "va.csv"))
    assert info.value.source == "hospital va" and "set data.source: csv" in info.value.problems[0]


@pytest.mark.parametrize("config, data", [("images_digit_hospitals.yaml", "digit_hospitals"),
                                          ("images_multilabel_findings.yaml", "digit_findings"),
                                          ("images_volumes_3d.yaml", "volume_hospitals")])
def test_image_hospitals_census_agrees_the_same_plan_as_reading_every_folder(tmp_path, monkeypatch, config, data):
    """In a deployment each hospital describes its own image folder (counts, its labels or
    findings, never a pixel); the coordinator's plan equals the one made from reading every folder."""
    from orchestrator.spec.loading import load_job

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    job = load_job(CONFIGS / config, [f"data.path={CONFIGS / 'data' / data}"])
    folders = sorted((CONFIGS / "data" / data).iterdir())
    described = {i: describe_share(job, i, len(folders), str(f)) for i, f in enumerate(folders)}
    assert not any(k in d for d in described.values() for k in ("X", "pixels", "X_train"))
    census, files = plan_from_census(job, described), plan_data(job)
    assert census.schema == files.schema and len(census.schema.features) == (16**3 if "volume" in data else 28 * 28)
    assert census.hospitals == files.hospitals == [f.name for f in folders]
    assert census.hospital_sizes == files.hospital_sizes == ([120, 120] if "volume" in data else [400, 400, 400])
    assert census.schema.multilabel == (config == "images_multilabel_findings.yaml")
