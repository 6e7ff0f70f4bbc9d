"""Cross-site validation (NVIDIA FLARE's model x site matrix): every model scored at every hospital
on that hospital's own test rows. No row moves; only each hospital's metrics come back.

The matrix is {site: {model: {metric: value}}} (plus `num_examples`). A federated job builds it
through its engine's grid at the end (`from_grid`: the hospitals' own evaluate handler answers);
`kind: local` and `consortium crossval` in this process, from the shares a simulation gives each
hospital (`in_process`). Logged as crossval/matrix.json, crossval/heatmap.png and, per model,
`crossval/<model>/mean_<metric>` (the plain mean over hospitals).
"""
from __future__ import annotations

import numpy as np

from orchestrator.jobs.sites import ROWS

Matrix = dict[str, dict[str, dict[str, float]]]


def headline_metric(matrix: Matrix) -> str:
    cell = next((c for row in matrix.values() for c in row.values()), {})
    return next((k for k in ("accuracy", "r2", "mse", "loss") if k in cell), "loss")


def in_process(job, plan, models: dict, hospitals=None) -> Matrix:
    """`models` (name -> torch module) at every hospital of the job's data."""
    from orchestrator.core.training import Objective
    from orchestrator.jobs.sites import load_hospitals, score

    hospitals = hospitals if hospitals is not None else load_hospitals(job, plan)
    matrix: Matrix = {}
    for h in hospitals:
        row = {}
        for name, model in models.items():
            res, _ = score(h, model, Objective.of(job, plan.num_classes, None, model, plan.schema.classes))
            row[name] = {k: float(v) for k, v in res.items()}
        matrix[h.name] = row
    return matrix


def from_grid(grid, nodes: list[int], config, models: dict, names: dict[int, str], timeout: float) -> Matrix:
    """`models` (name -> ArrayRecord) sent to every hospital as an evaluate message; each answers
    with its metrics on its own test rows (the same handler as every round's evaluation)."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from orchestrator.core.protocol import ARRAYS, CONFIG, EVAL_PREFIX, METRICS, NUM_EXAMPLES, PARTITION_ID

    matrix: Matrix = {}
    for model_name, arrays in models.items():
        content = RecordDict({CONFIG: ConfigRecord(dict(config)), ARRAYS: arrays})
        messages = [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n) for n in nodes]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                continue  # a hospital that does not answer has an empty cell
            m = reply.content[METRICS]
            site = names.get(int(m[PARTITION_ID]), str(m[PARTITION_ID]))
            cell = {k[len(EVAL_PREFIX):]: float(v) for k, v in m.items() if k.startswith(EVAL_PREFIX)}
            cell[ROWS] = float(m[NUM_EXAMPLES])
            matrix.setdefault(site, {})[model_name] = cell
    order = {name: i for i, name in enumerate(names.values())}
    return dict(sorted(matrix.items(), key=lambda item: order.get(item[0], len(order))))


def model_names(matrix: Matrix) -> list[str]:
    return list(dict.fromkeys(m for row in matrix.values() for m in row))


def means(matrix: Matrix) -> dict[str, dict[str, float]]:
    """Per model, the plain mean over hospitals of every metric (NaN cells left out)."""
    from orchestrator.core.metrics import site_mean

    return {model: site_mean([row[model] for row in matrix.values() if model in row], skip=(ROWS,))
            for model in model_names(matrix)}


def log_crossval(run, job, matrix: Matrix) -> dict[str, float]:
    """Into the run: the matrix, its heatmap and each model's mean over hospitals; returns those means."""
    summary = {f"crossval/{model}/mean_{k}": v for model, m in means(matrix).items() for k, v in m.items()}
    run.log_metrics(summary, 0)
    if not job.tracking.enabled:
        return summary
    run.log_dict(matrix, "crossval/matrix.json")
    from orchestrator.tracking import plots

    metric = headline_metric(matrix)
    models, sites = model_names(matrix), list(matrix)
    values = np.array([[matrix[s].get(m, {}).get(metric, np.nan) for m in models] for s in sites], dtype=float)
    fig = plots.site_matrix(values, sites, models, metric,
                            f"{job.name}: cross-site validation, {metric} of each model at each hospital")
    run.log_figure(fig, "crossval/heatmap.png")
    plots.close(fig)
    run.flush()
    return summary


def table(matrix: Matrix, metric: str | None = None):
    """A rich table for the console: hospitals x models, then the mean over hospitals."""
    from rich import box
    from rich.table import Table

    metric = metric or headline_metric(matrix)
    models = model_names(matrix)
    t = Table(box=box.SIMPLE_HEAD, title=f"cross-site validation: {metric} at each hospital (own test rows)",
              title_justify="left", pad_edge=False)
    t.add_column("hospital")
    t.add_column("rows", justify="right", style="dim")
    for m in models:
        t.add_column(m, justify="right")

    def shown(v) -> str:
        return "-" if v is None or np.isnan(v) else f"{v:.4f}"

    for site, row in matrix.items():
        rows = next((int(c[ROWS]) for c in row.values() if ROWS in c), 0)
        t.add_row(site, str(rows), *(shown(row.get(m, {}).get(metric)) for m in models))
    mean = means(matrix)
    t.add_row("[bold]mean over hospitals[/]", "", *(shown(mean[m].get(metric)) for m in models))
    return t


def model_label(model_uri: str) -> str:
    """A short column name: models:/heart/3 -> heart_v3, runs:/RUN_ID/model -> run_RUN_ID[:8]."""
    import re

    if model_uri.startswith("models:/m-") and "/" not in model_uri[len("models:/"):]:
        label = "model_" + model_uri[len("models:/m-"):][:8]
    elif model_uri.startswith("models:/"):
        name, _, version = model_uri[len("models:/"):].partition("/")
        label = f"{name}_v{version}" if version else name
    elif model_uri.startswith("runs:/"):
        label = "run_" + model_uri[len("runs:/"):].split("/")[0][:8]
    else:
        label = model_uri
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", label)[:60]


def crossval_model(job, model_uris: list[str], log: bool = True) -> tuple[Matrix, str | None]:
    """`consortium crossval`: logged models scored at every hospital of `job`'s data, in this
    process (the shares of a simulation); with `log`, into a new run of the job's experiment.
    Returns the matrix and the run id."""
    from orchestrator.jobs.plan import plan_data
    from orchestrator.jobs.runtime import git_commit, prepare_environment
    from orchestrator.spec.errors import UserError

    if not job.by_hospital:
        raise UserError("CONFIG", [f"kind {job.kind} pools the data; pass the federated (or local) job whose "
                                   "hospitals should score the model"])
    if job.federated.engine == "deployment":
        raise UserError("federated.engine", [
            "deployment: the hospitals hold their data, this machine none; set federated.crossval: true in "
            "the job, and its hospitals score the final and best models at the end of the run"])
    prepare_environment()
    plan = plan_data(job)
    from orchestrator.core.models import build_model
    from orchestrator.tracking.runs import load_logged_model
    from orchestrator.tracking.store import Tracker

    tracker = Tracker(job.tracking.uri, job.tracking.experiment)
    models, lineage = {}, {}
    for uri in model_uris:
        logged, tags = load_logged_model(tracker.uri, uri, "MODEL_URI")
        # the job's model section rebuilds the network; the logged weights must fit it exactly
        model = build_model(job.model, plan.num_features, max(plan.num_classes, 1))
        state = {k: v.detach().cpu() for k, v in logged.state_dict().items()}
        own = model.state_dict()
        wrong = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong or set(state) - set(own):
            inputs = state.get("input.mean")
            why = (f"it takes {inputs.numel()} input columns, the hospitals hold {plan.num_features}"
                   if inputs is not None and inputs.numel() != plan.num_features else
                   f"its layers differ from {config_model(job)} ({', '.join((wrong or sorted(set(state) - set(own)))[:4])})")
            raise UserError("MODEL_URI", [f"{uri} does not fit this job: {why}; pass the config it was "
                                          "trained with (or overrides such as model.hidden=[...])"])
        model.load_state_dict(state)
        models[model_label(uri)] = model
        lineage = lineage or tags
    matrix = in_process(job, plan, models)
    if not log or not job.tracking.enabled:
        return matrix, None
    tags = {"kind": "crossval", "job": job.name, "dataset": job.data.path or job.data.source,
            "git_commit": git_commit(), "crossval.models": ",".join(model_uris), **lineage,
            "mlflow.note.content": f"Cross-site validation of {', '.join(model_uris)} at the "
                                   f"{len(plan.hospitals)} hospitals of {job.name}."}
    with tracker.run(f"{job.name}-crossval", tags) as run:
        run.log_params({"crossval.models": ",".join(model_uris), "federated.num_clients": len(plan.hospitals),
                        "data.test_fraction": job.data.test_fraction, "seed": job.seed, **plan.notes})
        log_crossval(run, job, matrix)
        run_id = run.run_id
    return matrix, run_id


def config_model(job) -> str:
    m = job.model
    return f"the job's model ({m.name}" + (f", hidden {list(m.hidden)}" if getattr(m, "hidden", None) else "") + ")"
