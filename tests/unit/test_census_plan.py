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
