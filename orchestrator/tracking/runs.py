"""Reading runs back from any MLflow store: runs and models for the CLI, a source model's weights."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from orchestrator.spec.errors import UserError


def load_source_weights(uri: str, model_uri: str) -> tuple[dict, dict[str, str]]:
    """The weights of a logged model (models:/NAME/VERSION or runs:/RUN_ID/model) and its lineage tags."""
    model, lineage = load_logged_model(uri, model_uri, "model.init_from")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, lineage


def load_logged_model(uri: str, model_uri: str, key: str):
    """A logged model as its torch module, and its lineage tags; a wrong URI is a UserError on `key`."""
    import mlflow.pytorch

    client = MlflowClient(uri)
    lineage = {"lineage.init_from": model_uri}
    try:
        logged_id = model_uri.startswith("models:/m-") and "/" not in model_uri[len("models:/"):]
        # a logged model id (MLflow 3: what `consortium run` prints when nothing is registered)
        # loads as it is; a registered name is resolved to its version first
        if model_uri.startswith("models:/") and not logged_id:
            name, _, version = model_uri[len("models:/"):].partition("/")
            if version in ("", "latest"):
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ValueError(f"no registered model '{name}'")
                mv = max(versions, key=lambda v: int(v.version))
                model_uri = f"models:/{name}/{mv.version}"
            else:
                mv = client.get_model_version(name, version)
            lineage.update({"lineage.source_model": name, "lineage.source_version": str(mv.version),
                            "lineage.source_run_id": mv.run_id or ""})
        elif model_uri.startswith("runs:/"):
            lineage["lineage.source_run_id"] = model_uri[len("runs:/"):].split("/")[0]
        mlflow.set_tracking_uri(uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(key, [f"cannot load {model_uri} from {uri}: {first[:300]}"]) from None
    return model, lineage


def find_runs(uri: str, experiment: str | None, run_ids: list[str] | None, limit: int = 20) -> list:
    """The given runs, or the newest `limit` runs of `experiment` (every experiment when None)."""
    client = MlflowClient(uri)
    try:
        if run_ids:
            return [client.get_run(r) for r in run_ids]
        if experiment:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                names = [e.name for e in client.search_experiments()]
                raise UserError("--experiment", [f"no experiment '{experiment}' in {uri} (there are: {', '.join(names)})"])
            ids = [exp.experiment_id]
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        return list(client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=limit))
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"tracking uri {uri}", [first[:300]]) from None


def previous_run(uri: str, experiment_id: str, run_id: str, job_name: str) -> str | None:
    """The run of the same job just before `run_id` in its experiment (for `consortium compare`)."""
    try:
        name = job_name.replace("\\", "\\\\").replace("'", "\\'")
        found = MlflowClient(uri).search_runs([experiment_id], filter_string=f"tags.job = '{name}'",
                                              order_by=["attributes.start_time DESC"], max_results=20)
    except Exception:  # noqa: BLE001 - only a suggestion in the summary
        return None
    return next((r.info.run_id for r in found
                 if r.info.run_id != run_id and "mlflow.parentRunId" not in r.data.tags), None)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def model_versions(uri: str) -> list[dict]:
    client = MlflowClient(uri)
    rows = []
    for model in client.search_registered_models():
        for v in client.search_model_versions(f"name='{model.name}'"):
            rows.append({"name": model.name, "version": int(v.version), "run_id": v.run_id, "status": v.status,
                         "created": v.creation_timestamp})
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


def pooled_history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every pooled metric's history from a run (per-hospital series and timings stay in MLflow)."""
    client = MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith(("hospital_", "time/"))]
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in sorted(keys)}
