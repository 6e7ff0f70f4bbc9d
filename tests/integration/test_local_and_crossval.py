"""What a hospital asks after FedAvg: the local-only baseline (`kind: local`) and cross-site
validation (every model scored at every hospital on its own test rows), on the four real
heart-disease hospitals, through real MLflow and Flower's grid."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, ROOT, run_cli

HEART = ROOT / "configs" / "data" / "heart_disease"
SITES = ["cleveland", "hungarian", "switzerland", "va"]


def _local(uri: str, *overrides: str):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "heart_local.yaml", [f"tracking.uri={uri}", f"data.path={HEART}", "federated.rounds=6",
                                                       *overrides])
    return job, run_job(job)


def _last(client, run_id: str, key: str) -> float:
    history = client.get_metric_history(run_id, key)
    return max(history, key=lambda m: m.step).value


def test_each_hospital_trains_alone_with_the_federated_budget_and_the_means_are_exact(store):
    job, result = _local(store)
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.data.tags["kind"] == "local" and run.info.status == "FINISHED"
    # one step per "round" of train.epochs epochs, for every hospital
    for site in SITES:
        steps = [m.step for m in client.get_metric_history(result.run_id, f"hospital_{site}/eval/accuracy")]
        assert sorted(steps) == list(range(1, 7)), (site, steps)
    acc = {s: _last(client, result.run_id, f"hospital_{s}/eval/accuracy") for s in SITES}
    rows = {s: _last(client, result.run_id, f"hospital_{s}/eval/num_examples") for s in SITES}
    # the mean over hospitals counts each once; the pooled accuracy weighs them by their test rows
    assert result.final["site_mean/accuracy"] == pytest.approx(np.mean(list(acc.values())), abs=1e-9)
    pooled = sum(acc[s] * rows[s] for s in SITES) / sum(rows.values())
    assert result.final["eval/accuracy"] == pytest.approx(pooled, abs=1e-9)
    # each hospital's own model is kept as an artifact
    files = {f.path for f in client.list_artifacts(result.run_id, "local_models")}
    assert files == {f"local_models/{s}.pt" for s in SITES}


def test_a_hospital_alone_is_untouched_by_the_others_data(store, tmp_path):
    """Nothing is shared: with the last hospital's file gone, the others' local results are identical."""
    three = tmp_path / "three"
    three.mkdir()
    for site in SITES[:3]:
        shutil.copy(HEART / f"{site}.csv", three / f"{site}.csv")
    _, full = _local(store, "federated.crossval=false")
    _, fewer = _local(store, f"data.path={three}", "federated.crossval=false")
    client = MlflowClient(store)
    for site in SITES[:3]:
        key = f"hospital_{site}/eval/loss"
        assert _last(client, fewer.run_id, key) == pytest.approx(_last(client, full.run_id, key), abs=1e-6), site
    assert "hospital_va/eval/loss" not in client.get_run(fewer.run_id).data.metrics


def test_local_crossval_scores_every_hospitals_model_at_every_hospital(store, tmp_path):
    _, result = _local(store)
    client = MlflowClient(store)
    path = client.download_artifacts(result.run_id, "crossval/matrix.json", str(tmp_path))
    matrix = json.loads(Path(path).read_text())
    assert list(matrix) == SITES
    assert all(set(row) == {f"local_{s}" for s in SITES} for row in matrix.values())
    for site in SITES:   # the diagonal is each hospital's own final score
        own = _last(client, result.run_id, f"hospital_{site}/eval/accuracy")
        assert matrix[site][f"local_{site}"]["accuracy"] == pytest.approx(own, abs=1e-9)
        assert matrix[site][f"local_{site}"]["num_examples"] == _last(
            client, result.run_id, f"hospital_{site}/eval/num_examples")
    mean = np.mean([matrix[s]["local_cleveland"]["accuracy"] for s in SITES])
    assert result.final["crossval/local_cleveland/mean_accuracy"] == pytest.approx(mean, abs=1e-9)
    assert "crossval/heatmap.png" in {f.path for f in client.list_artifacts(result.run_id, "crossval")}
    assert result.crossval == matrix


@pytest.mark.parametrize("engine", ["vectorized", "inline"])
def test_federated_crossval_through_the_grid_matches_the_rounds_and_the_command(store, tmp_path, engine):
    """At the end of a federated job each hospital scores the final and the best round's models with
    its own evaluate handler; `consortium crossval` of the logged model, in a fresh process, finds the
    same global column."""
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "heart_disease_sites.yaml", [
        f"tracking.uri={store}", f"data.path={HEART}", "federated.rounds=6", "federated.crossval=true", f"federated.engine={engine}",
        "tracking.register_model=heart-fedavg"])
    result = run_job(job)
    client = MlflowClient(store)
    matrix = result.crossval
    assert list(matrix) == SITES
    for site in SITES:
        last = _last(client, result.run_id, f"hospital_{site}/eval/accuracy")
        assert matrix[site]["global"]["accuracy"] == pytest.approx(last, abs=1e-9), site
    losses = {m.step: m.value for m in client.get_metric_history(result.run_id, "eval/loss")}
    best = min(losses, key=losses.get)
    models = set(matrix["cleveland"])
    assert models == ({"global"} if best == 6 else {"global", f"best_round_{best}"}), (models, losses)
    proc = run_cli("crossval", result.registered, str(CONFIGS / "heart_local.yaml"), f"tracking.uri={store}",
                   f"data.path={HEART}", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    again = json.loads(proc.stdout.splitlines()[-1])
    assert "mean over hospitals" in proc.stdout and "heart-fedavg_v1" in proc.stdout
    for site in SITES:
        assert again[site]["heart-fedavg_v1"]["accuracy"] == pytest.approx(matrix[site]["global"]["accuracy"],
                                                                           abs=1e-6), site
    crossval_runs = client.search_runs([run.info.experiment_id for run in [client.get_run(result.run_id)]],
                                       "tags.kind = 'crossval'")
    assert len(crossval_runs) == 1 and crossval_runs[0].data.tags["lineage.source_model"] == "heart-fedavg"


def test_crossval_command_refuses_what_cannot_be_scored(store, tmp_path):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "heart_disease_sites.yaml", [f"tracking.uri={store}", f"data.path={HEART}", "kind=centralized",
                                                          "train.epochs=2", "tracking.register_model=pooled"])
    run_job(job)
    uri = [f"tracking.uri={store}", f"data.path={HEART}"]
    other = run_cli("crossval", "models:/pooled/1", str(CONFIGS / "heart_local.yaml"), *uri, "model.hidden=[8]",
                    cwd=tmp_path)
    assert other.returncode == 2 and "does not fit this job" in other.stderr and "Traceback" not in other.stderr
    pooled = run_cli("crossval", "models:/pooled/1", str(CONFIGS / "heart_disease_sites.yaml"), *uri,
                     "kind=centralized", cwd=tmp_path)
    assert pooled.returncode == 2 and "pools the data" in pooled.stderr
    missing = run_cli("crossval", "models:/nobody/3", str(CONFIGS / "heart_local.yaml"), *uri, cwd=tmp_path)
    assert missing.returncode == 2 and "MODEL_URI" in missing.stderr and "cannot load" in missing.stderr
    # the pooled model scored at each hospital: the "centralized" column of the heart table
    ok = run_cli("crossval", "models:/pooled/1", str(CONFIGS / "heart_local.yaml"), *uri, "--json", "--no-log",
                 cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    matrix = json.loads(ok.stdout.splitlines()[-1])
    assert list(matrix) == SITES and all(0.0 <= matrix[s]["pooled_v1"]["accuracy"] <= 1.0 for s in SITES)


def _personal_run(store, engine: str, *extra: str):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "heart_personalized.yaml", [f"tracking.uri={store}", f"data.path={HEART}",
                                                          "federated.rounds=6", f"federated.engine={engine}", *extra])
    return run_job(job)


def test_finetuned_personal_models_stay_at_their_hospitals_and_leave_the_federation_as_it_was(store):
    result = _personal_run(store, "inline", "federated.personalize.share_models=false", "federated.crossval=true")
    client = MlflowClient(store)
    acc = {s: _last(client, result.run_id, f"hospital_{s}/personal/accuracy") for s in SITES}
    rows = {s: _last(client, result.run_id, f"hospital_{s}/eval/num_examples") for s in SITES}
    assert result.final["personal_site_mean/accuracy"] == pytest.approx(np.mean(list(acc.values())), abs=1e-9)
    assert result.final["personal/accuracy"] == pytest.approx(
        sum(acc[s] * rows[s] for s in SITES) / sum(rows.values()), abs=1e-9)
    assert result.final["personal/hospitals"] == 4
    # kept at the hospitals: no weights logged, none in the cross-site matrix
    assert not client.list_artifacts(result.run_id, "personal_models")
    assert not any(m.startswith("personal_") for m in result.crossval["cleveland"])
    # personalizing comes after the last round: the global model is the one a plain run trains
    plain = _personal_run(store, "inline", "federated.personalize=null")
    assert plain.final["eval/accuracy"] == result.final["eval/accuracy"]
    assert plain.final["eval/loss"] == pytest.approx(result.final["eval/loss"], abs=1e-12)
    assert not any(k.startswith("personal") for k in plain.final)


def test_shared_personal_models_are_logged_and_scored_at_every_hospital_in_flowers_simulation(store):
    result = _personal_run(store, "simulation", "federated.personalize.share_models=true", "federated.crossval=true")
    client = MlflowClient(store)
    files = {f.path for f in client.list_artifacts(result.run_id, "personal_models")}
    assert files == {f"personal_models/{s}.pt" for s in SITES}
    for site in SITES:   # the diagonal: each personal model at its own hospital, as that hospital said
        assert result.crossval[site][f"personal_{site}"]["accuracy"] == pytest.approx(
            _last(client, result.run_id, f"hospital_{site}/personal/accuracy"), abs=1e-9)
    assert set(result.crossval["va"]) >= {"global", *(f"personal_{s}" for s in SITES)}


def test_round_level_early_stopping_ends_with_the_best_rounds_model_and_its_metrics(store):
    from orchestrator.jobs.runner import run_job
    from orchestrator.spec.loading import load_job

    job = load_job(CONFIGS / "heart_crossval.yaml", [
        f"tracking.uri={store}", f"data.path={HEART}", "federated.rounds=30", "federated.engine=inline",
        "federated.early_stopping.patience=2", "tracking.register_model=null"])
    result = run_job(job)
    client = MlflowClient(store)
    losses = {m.step: m.value for m in client.get_metric_history(result.run_id, "eval/loss")}
    best, stopped = int(result.final["early_stopping/best_round"]), int(result.final["early_stopping/stopped_round"])
    assert stopped < 30 and max(losses) == stopped, (stopped, sorted(losses))   # no round after the stop
    assert stopped == best + 2 and best == min(losses, key=losses.get)          # patience 2, the lowest loss
    assert all(losses[r] >= losses[best] for r in (best + 1, best + 2))
    # the job ends with the best round's model: its metrics are the run's final ones, and each
    # hospital scores the restored model exactly as it scored that round's
    assert result.final["eval/loss"] == pytest.approx(losses[best], abs=1e-12)
    assert result.final["early_stopping/restored"] == 1.0
    for site in SITES:
        at_best = [m.value for m in client.get_metric_history(result.run_id, f"hospital_{site}/eval/accuracy")
                   if m.step == best]
        assert result.crossval[site]["global"]["accuracy"] == pytest.approx(at_best[0], abs=1e-9), site
    assert set(result.crossval["va"]) == {"global"}   # the best round is the global model now


def test_early_stopping_on_a_metric_the_rounds_do_not_have_is_a_user_error(store, tmp_path):
    central = run_cli("run", str(CONFIGS / "heart_crossval.yaml"), f"tracking.uri={store}", f"data.path={HEART}",
                      "federated.early_stopping.metric=central/loss", cwd=tmp_path)
    assert central.returncode == 2 and "federated.early_stopping.metric" in central.stderr
    assert "no central held-out split" in central.stderr and "Traceback" not in central.stderr
    wrong = run_cli("run", str(CONFIGS / "heart_crossval.yaml"), f"tracking.uri={store}", f"data.path={HEART}",
                    "federated.early_stopping.metric=eval/r2", "federated.rounds=3", cwd=tmp_path)
    assert wrong.returncode == 2 and "'eval/r2' is not a metric of this job's rounds" in wrong.stderr, wrong.stderr
    assert "eval/accuracy" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.parametrize("method,engine", [("fedper", "auto"), ("fedrep", "auto"), ("fedbn", "auto"),
                                           ("ditto", "auto"), ("fedper", "simulation")])
def test_a_personal_part_kept_at_each_hospital_across_rounds(store, method, engine):
    """Every round each hospital scores its personal model beside the global one; at the end the
    personal model it shares is the global model with only its own part kept (fedper/fedrep: the
    head, fedbn: batch norm) or, for ditto, a model of its own."""
    extra = ["model.batchnorm=true"] if method == "fedbn" else []
    result = _personal_run(store, engine, f"federated.personalize.method={method}", "federated.rounds=4",
                           "federated.personalize.share_models=true", "federated.crossval=false", *extra)
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    # auto: inline (vectorized keeps no per-hospital part); simulation: a Ray actor per hospital
    assert run.data.params["federated.engine_ran"] == ("inline" if engine == "auto" else engine)
    for r in range(1, 5):
        at = {s: [m.value for m in client.get_metric_history(result.run_id, f"hospital_{s}/personal/accuracy")
                  if m.step == r] for s in SITES}
        rows = {s: [m.value for m in client.get_metric_history(result.run_id, f"hospital_{s}/eval/num_examples")
                    if m.step == r][0] for s in SITES}
        pooled = [m.value for m in client.get_metric_history(result.run_id, "personal/accuracy") if m.step == r]
        assert all(at.values()) and len(set(pooled)) == 1, (r, at, pooled)
        assert pooled[0] == pytest.approx(sum(at[s][0] * rows[s] for s in SITES) / sum(rows.values()), abs=1e-9)
        if r == 4:   # the last round's evaluation and the final query see the same personal model
            assert all(len(set(v)) == 1 for v in at.values()), at
    with np.load(Path(run.data.tags["federated.checkpoints"]) / "round_00004.npz") as z:
        final = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
    import torch

    differs = set()
    for site in SITES:
        path = client.download_artifacts(result.run_id, f"personal_models/{site}.pt", str(Path(store[10:]).parent))
        own = {k: v.numpy() for k, v in torch.load(path).items()}
        differs |= {k for k in own if not np.array_equal(own[k], final[k])}
    if method in ("fedper", "fedrep"):
        assert differs and all(k.startswith("head.") for k in differs), differs
    elif method == "fedbn":
        from clients.personal import local_keys
        from orchestrator.core.models import build_model
        from orchestrator.spec.loading import load_job

        spec = load_job(CONFIGS / "heart_personalized.yaml", ["model.batchnorm=true"]).model
        norms = set(local_keys(build_model(spec, len(final["input.mean"]), 2), "fedbn"))
        assert norms and differs and differs <= norms, (differs, norms)
    else:
        assert any(k.startswith("head.") for k in differs) and any(k.startswith("body.") for k in differs)
