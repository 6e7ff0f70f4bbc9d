"""Find what an interrupted run needs to continue: its resolved job spec and its checkpoints.

Ray jobs continue from Ray Train's last checkpoint; federated jobs from the last round checkpoint
(global model + strategy state; each hospital keeps its own state, e.g. SCAFFOLD's c_i)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.spec.job import JobSpec
from orchestrator.spec.errors import UserError
from orchestrator.spec.loading import load_job


def load_interrupted(run_id: str, tracking_uri: str | None) -> JobSpec:
    from orchestrator.tracking.store import Tracker, resolve_uri

    uri = resolve_uri(tracking_uri)
    tracker = Tracker(uri, "consortium")
    try:
        run = tracker.get_run(run_id)
    except Exception:
        raise UserError(f"run {run_id}", [f"no such MLflow run in {uri} (pass --tracking-uri)"]) from None
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id}", ["already FINISHED: nothing to resume"])
    kind = run.data.tags.get("kind")
    if kind not in ("ray", "federated"):
        raise UserError(f"run {run_id}", [f"kind '{kind}': resume continues ray and federated jobs from their "
                                          "checkpoints; run this job again instead"])
    storage = run.data.tags.get("ray.storage" if kind == "ray" else "federated.checkpoints")
    if not storage or not Path(storage).is_dir():
        raise UserError(f"run {run_id}", [f"its checkpoints are gone ({storage}): run the job again instead"])
    with tempfile.TemporaryDirectory() as d:
        local = tracker.client.download_artifacts(run_id, "config/resolved.yaml", d)
        job = load_job(local, [f"tracking.uri={uri}"])
    if job.kind == "federated" and job.federated.secagg is not None and job.federated.secagg.enabled:
        raise UserError(f"run {run_id}", ["a secure-aggregation (SecAgg+) run cannot be resumed: Flower's SecAgg+ "
                                          "workflow always starts at round 1; run the job again instead"])
    return job
