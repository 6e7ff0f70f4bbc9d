"""A real federation on 127.0.0.1: Flower's SuperLink with TLS and SuperNode authentication, one
SuperNode per hospital given only its own CSV, the coordinator none (`consortium federation poc`)."""
from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient

from tests.conftest import CONFIGS, run_cli

pytestmark = pytest.mark.integration

HEART = CONFIGS / "heart_disease_sites.yaml"


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_four_heart_hospitals_federate_through_the_deployment_engine_as_they_do_in_simulation(tmp_path):
    """Also with each hospital keeping its own head across rounds (fedper: on its SuperNode, in its
    Flower Context), its updates sent 8-bit with error feedback (the residual kept there too), and
    the cross-site matrix scored at the end: the same numbers, bytes on the wire included, in both engines."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    common = [f"data.path={CONFIGS / 'data' / 'heart_disease'}", "federated.rounds=2", f"tracking.uri={uri}",
              "federated.personalize.method=fedper", "federated.crossval=true", "federated.compression={method: int8}"]
    deployed = _result(run_cli("federation", "poc", str(HEART), *common, "tracking.register_model=heart-deployed",
                               "--json", cwd=tmp_path, timeout=900))
    simulated = _result(run_cli("run", str(HEART), *common, "federated.engine=simulation", "--json", cwd=tmp_path))

    # same seed, same hospitals, same partition ids: the same numbers, whichever engine carried them
    assert deployed["final"].keys() == simulated["final"].keys()
    assert {"personal/accuracy", "personal_site_mean/accuracy", "crossval/global/mean_accuracy",
            "comm/bytes_up", "comm/bytes_down"} <= deployed["final"].keys()
    for k, v in simulated["final"].items():
        if not k.startswith(("time/", "comm/")):
            assert deployed["final"][k] == pytest.approx(v, abs=1e-6), k
    # the same updates on the wire; a deployed reply also carries its hospital's `site` record
    extra = deployed["final"]["comm/bytes_up"] - simulated["final"]["comm/bytes_up"]
    assert 0 < extra <= 4 * 100, extra
    client = MlflowClient(uri)
    run = client.get_run(deployed["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["federated.engine"] == "deployment"
    assert run.data.params["data.schema_from"] == "the hospitals' census"  # the coordinator read no file
    sites = {k.split("/")[0] for k in run.data.metrics if k.startswith("hospital_")}
    assert sites == {"hospital_cleveland", "hospital_hungarian", "hospital_switzerland", "hospital_va"}
    answered = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/hospitals"))
    assert [v for _, v in answered] == [4.0, 4.0]  # every hospital evaluated in both rounds
    assert deployed["registered"] == "models:/heart-deployed/1"
    assert client.get_model_version("heart-deployed", "1").run_id == deployed["run_id"]
    assert "logs/serverapp.txt" in [a.path for a in client.list_artifacts(run.info.run_id, "logs")]


def test_a_hospital_whose_csv_lacks_the_target_fails_the_deployed_run_naming_that_hospital(tmp_path):
    data = tmp_path / "sites"
    data.mkdir()
    shutil.copy(CONFIGS / "data" / "heart_disease" / "cleveland.csv", data / "cleveland.csv")
    lines = (CONFIGS / "data" / "heart_disease" / "va.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, c in enumerate(header) if c != "target"]
    (data / "va.csv").write_text("\n".join(",".join(row.split(",")[i] for i in keep) for row in lines) + "\n")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = run_cli("federation", "poc", str(HEART), f"data.path={data}", "federated.rounds=1", f"tracking.uri={uri}",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "hospital va" in proc.stderr and "column 'target' not found" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("heart-disease").experiment_id])
    assert run.info.status == "FAILED"
    assert "hospital va" in run.data.tags["consortium.error"]


def test_image_hospitals_with_several_findings_federate_through_the_deployment_engine_as_inline(tmp_path):
    """Three hospitals' image exports (PNG, DICOM, NIfTI + JPEG) listed with several findings each:
    each SuperNode reads only its own folder and the census carries counts and pixel sums, never a
    pixel; the multi-label metrics are the inline engine's."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = str(CONFIGS / "images_multilabel_findings.yaml")
    common = [f"data.path={CONFIGS / 'data' / 'digit_findings'}", "federated.rounds=1", f"tracking.uri={uri}",
              "tracking.log_model=false"]
    deployed = _result(run_cli("federation", "poc", config, *common, "--json", cwd=tmp_path, timeout=900))
    inline = _result(run_cli("run", config, *common, "federated.engine=inline", "--json", cwd=tmp_path))
    assert {"eval/auroc_even", "eval/auroc_large", "eval/auroc_round", "eval/hamming_loss"} <= deployed["final"].keys()
    for k, v in inline["final"].items():
        if not k.startswith(("time/", "comm/")):
            assert deployed["final"][k] == pytest.approx(v, abs=1e-6), k
    # the same updates on the wire; a deployed reply also carries its hospital's `site` record
    extra = deployed["final"]["comm/bytes_up"] - inline["final"]["comm/bytes_up"]
    assert 0 < extra <= 3 * 100, extra
    run = MlflowClient(uri).get_run(deployed["run_id"])
    assert run.data.params["data.schema_from"] == "the hospitals' census"
    assert run.data.tags["federated.engine"] == "deployment"
