"""Consortium from Python: the jobs of the `consortium` command, for notebooks and scripts.

    from orchestrator import run, validate

    job = validate("configs/hospitals_fedavg.yaml", overrides=["federated.rounds=5"])
    result = run("configs/hospitals_fedavg.yaml", overrides=["federated.rounds=5"])
    result.final["central/accuracy"]          # final metrics
    result.history["eval/accuracy"]           # [(round, value), ...]
    result.model_uri, result.registered       # runs:/.../model, models:/NAME/VERSION

A job is a YAML path, a dict of the YAML's content, or a JobSpec. Mistakes raise
`orchestrator.UserError` (ConfigError for the YAML, DataError for the data), whose message names
every offending key or file; nothing is created in MLflow then. A job that fails after it started
raises its exception, with its MLflow run marked FAILED and what was logged kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from orchestrator.spec.errors import ConfigError, DataError, UserError  # noqa: F401 - re-exported
from orchestrator.jobs.lifecycle import NewRun, RunResult
from orchestrator.spec.job import JobSpec

__all__ = ["run", "validate", "load", "RunResult", "UserError", "ConfigError", "DataError"]

Job = Union[str, Path, dict, JobSpec]


def load(job: Job, overrides: list[str] | None = None) -> JobSpec:
    from orchestrator.spec.loading import dump_yaml, load_job, load_raw

    if isinstance(job, JobSpec):
        if not overrides:
            return job
        import yaml

        return load_raw(yaml.safe_load(dump_yaml(job)), "job", overrides)
    if isinstance(job, dict):
        return load_raw(job, "job", overrides or [])
    if not Path(job).is_file():
        raise ConfigError(str(job), ["no such file: expected a job YAML (e.g. configs/hospitals_fedavg.yaml)"])
    return load_job(job, overrides or [])


def validate(job: Job, overrides: list[str] | None = None, data: bool = True) -> JobSpec:
    """The validated job spec; with `data`, its data opened and split as `run` would (no run made)."""
    spec = load(job, overrides)
    if data and not (spec.kind == "federated" and spec.federated.engine == "deployment"):
        from orchestrator.jobs.plan import plan_data

        plan_data(spec)
    return spec


def run(job: Job, overrides: list[str] | None = None, listeners: list | None = None) -> RunResult:
    """Run a job as `consortium run` does (tracked in MLflow, model registered) and return its result.

    `listeners`: objects with a `round_end(end)` method (`orchestrator.jobs.federated.listeners`),
    called at the end of every round of a federated job in this process, round 0 included, after
    the round's metrics are logged: `end.round`, `end.metrics`, `end.arrays` (the global model),
    `end.stop = True` to stop after this round."""
    spec = load(job, overrides)
    from orchestrator.jobs.runtime import prepare_environment

    prepare_environment()
    if spec.kind == "federated" and spec.federated.engine == "deployment":
        if listeners:
            raise UserError("listeners", ["round-end listeners run in this process; in Flower's deployment engine the "
                                          "rounds run in the SuperLink's ServerApp process: use another engine"])
        from orchestrator.federation.submit import run_deployed

        result = run_deployed(spec, say=lambda line: None)
    else:
        from orchestrator.jobs.runner import run_job

        result = run_job(spec, NewRun(listeners=tuple(listeners or ())))
    if not result.history and spec.tracking.enabled:
        from orchestrator.tracking.runs import pooled_history

        result.history = pooled_history(result.tracking_uri, result.run_id)
    return result
