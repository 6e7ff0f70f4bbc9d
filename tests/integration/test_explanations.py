"""Integrated gradients for every model family, logged as artifacts: per feature (a text column
summed over its one-hot inputs), per pixel, per time step; and in a federated job with no central
split, computed by each hospital on its own rows with only the per-input means sent back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS


def _run(config: str, store: str, *overrides: str):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    return run_job(load_job(CONFIGS / config, [f"tracking.uri={store}", "tracking.register_model=null", *overrides]))


def _attributions(store: str, run_id: str, tmp: Path) -> dict:
    client = MlflowClient(store)
    return json.loads(Path(client.download_artifacts(run_id, "explain/integrated_gradients.json", str(tmp))).read_text())


def test_federated_hospitals_attribute_on_their_own_rows(store, tmp_path):
    from orchestrator.jobs.plan import plan_data
    from orchestrator.spec.loading import load_job

    args = [f"data.path={CONFIGS / 'data' / 'heart_disease'}", "federated.rounds=3", "federated.engine=inline"]
    result = _run("heart_disease_sites.yaml", store, *args)
    found = _attributions(store, result.run_id, tmp_path)
    plan = plan_data(load_job(CONFIGS / "heart_disease_sites.yaml", args))
    assert found["evaluated_on"] == "hospitals' own test rows" and found["hospitals"] == 4
    own_test_rows = sum(round(n * 0.25 + 1e-9) for n in plan.hospital_sizes)
    assert abs(found["rows"] - own_test_rows) <= 4, (found["rows"], plan.hospital_sizes)
    values = [f["attribution"] for f in found["features"]]
    assert len(values) == 13 and all(np.isfinite(values)) and max(values) > 0
    assert values == sorted(values, reverse=True)
    paths = {a.path for a in MlflowClient(store).list_artifacts(result.run_id, "plots")}
    assert "plots/attributions.png" in paths


def test_a_cnn_gets_a_pixel_image_and_a_sequence_model_a_heat_strip(store, tmp_path):
    cnn = _run("digits_cnn_pretrain.yaml", store, "train.epochs=2", "kind=centralized")
    image = np.asarray(_attributions(store, cnn.run_id, tmp_path / "a")["image"])
    assert image.shape == (8, 8) and image.max() > 0
    assert image[:, 0].mean() < image[2:6, 2:6].mean()   # digits are drawn in the middle, not on the border
    seq = _run("sequences_lstm.yaml", store, "train.epochs=2", "kind=centralized")
    strip = np.asarray(_attributions(store, seq.run_id, tmp_path / "b")["steps_by_channel"])
    assert strip.shape[0] == 1 and strip.shape[1] >= 10 and strip.max() > 0
    client = MlflowClient(store)
    assert "plots/attributions_pixels.png" in {a.path for a in client.list_artifacts(cnn.run_id, "plots")}
    assert "plots/attributions_steps.png" in {a.path for a in client.list_artifacts(seq.run_id, "plots")}
