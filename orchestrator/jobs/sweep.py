"""kind: sweep — a Ray Tune search over dotted keys of a job, one MLflow child run per trial.

The parent run holds the search (space, scheduler, the table of trials, the best trial); every trial
is a `sweep.trial_kind` job in a child run (tag mlflow.parentRunId), reporting each epoch's metrics
to Tune so ASHA can stop the unpromising ones early. Every grid point is validated before anything
starts, so a bad value is a user error (exit 2) with nothing recorded.
"""
from __future__ import annotations

import json

from orchestrator.jobs import progress
from orchestrator.jobs.base import Context, Description, JobKind, Outcome
from orchestrator.spec.job import JobSpec
from orchestrator.spec.loading import set_dotted

TRIAL_TAG = "sweep.trial"


def trial_spec(base: dict, overrides: dict) -> JobSpec:
    data = json.loads(json.dumps(base))
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return JobSpec.model_validate(data)


def base_of(job: JobSpec) -> dict:
    from pathlib import Path

    from orchestrator.spec.job import trial_base

    base = trial_base(job)
    if job.data.path:   # a trial runs in Tune's own working directory
        base["data"]["path"] = str(Path(job.data.path).resolve())
    return base


def steps_of(job: JobSpec) -> int:
    """What a trial reports once per: epochs, or rounds for federated and local trials."""
    return job.federated.rounds if job.sweep.trial_kind in ("federated", "local") else job.train.epochs


def _trial(config: dict) -> None:
    """One trial, in a Ray Tune actor: the trial kind's job with this trial's values, run through the
    same lifecycle as any job (`runner.execute`) into a child run of the sweep's."""
    from ray import tune

    from orchestrator.jobs.plan import plan_data
    from orchestrator.jobs.lifecycle import Trial
    from orchestrator.jobs.runner import execute
    from orchestrator.tracking.store import Tracker

    overrides = {key: config[f"p{i}"] for i, key in enumerate(config["__keys"])}
    job = trial_spec(config["__base"], overrides)
    tracker = Tracker(config["__uri"], job.tracking.experiment)
    label = ", ".join(f"{k}={v}" for k, v in overrides.items())
    last: dict = {}

    def report(run_id: str, epoch: int, metrics: dict) -> None:
        # Tune may end this trial (ASHA, or the last epoch) as soon as it hears a report: the
        # last one waits until the model is logged and the run is complete.
        if last:
            tune.report(dict(last))
        last.clear()
        last.update({**metrics, "epoch": epoch, "run_id": run_id})

    trial = Trial(parent_tags={"mlflow.parentRunId": config["__parent"], TRIAL_TAG: label},
                  params={f"sweep.{k}": v for k, v in overrides.items()}, on_epoch=report)
    result = execute(job, plan_data(job), tracker, trial)
    tracker.client.set_tag(result.run_id, "sweep.model_uri", result.model_uri or "")
    tracker.client.set_tag(result.run_id, "sweep.completed", "true")
    tune.report({**last, **{k: v for k, v in result.final.items()
                            if k.startswith(("eval/", "central/", "val/", "site_mean/", "personal"))}})


def _space(job: JobSpec) -> dict:
    from ray import tune

    out = {}
    for i, (key, values) in enumerate(job.sweep.space.items()):
        if isinstance(values, dict):
            low, high = float(values["low"]), float(values["high"])
            out[f"p{i}"] = tune.loguniform(low, high) if values.get("log") else tune.uniform(low, high)
        elif job.sweep.search == "grid":
            out[f"p{i}"] = tune.grid_search(values)
        else:
            out[f"p{i}"] = tune.choice(values)
    return out


def run_sweep(ctx: Context) -> Outcome:
    """Run the search inside the parent run; its final metrics are the best trial's."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.jobs.ray.session import worker_env
    from orchestrator.jobs.runtime import consortium_home, ray_init_args
    from orchestrator.process import stop_on_sigterm

    job, parent, tracker = ctx.job, ctx.run, ctx.tracker
    spec = job.sweep
    if ray.is_initialized():
        ray.shutdown()
    ray.init(runtime_env={"env_vars": worker_env()}, **ray_init_args())
    stop_on_sigterm()
    try:
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=steps_of(job), grace_period=spec.grace_period,
                                   reduction_factor=2) if spec.scheduler == "asha" else FIFOScheduler())
        param_space = {**_space(job), "__keys": list(spec.space), "__base": base_of(job),
                       "__uri": tracker.uri, "__parent": parent.run_id}
        storage = consortium_home() / "tune"
        total = _trial_count(job)
        progress.begin("trial", total, f"{job.name}: {spec.search} search over {', '.join(spec.space)}")
        storage.mkdir(parents=True, exist_ok=True)
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                        num_samples=spec.num_samples or (1 if spec.search == "grid" else 4),
                                        max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=parent.run_id, storage_path=str(storage), verbose=0,
                                      callbacks=[_TrialProgress(spec.metric, total)] if progress.listening() else None),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    trials = _summarise(grid, job, tracker)
    if not trials:
        raise RuntimeError("sweep: no trial reported a metric; see the trials' errors above")
    done = [t for t in trials if t["completed"]] or trials
    best = (min if spec.mode == "min" else max)(done, key=lambda t: t["value"])
    parent.log_dict({"metric": spec.metric, "mode": spec.mode, "best_run_id": best["run_id"], "trials": trials},
                    "sweep/trials.json")
    for i, t in enumerate(sorted(trials, key=lambda t: t["started"])):
        parent.log_metrics({f"trial/{spec.metric}": t["value"]}, i)
    final = {f"best/{k}": v for k, v in best["metrics"].items() if isinstance(v, (int, float))
             and "/" in k and not k.startswith("time/")}
    parent.log_metrics({**final, "sweep/trials": len(trials),
                        "sweep/stopped_early": sum(not t["completed"] for t in trials)}, 0)
    parent.set_tags({"sweep.best_run_id": best["run_id"], "sweep.best": best["label"]})
    outcome = Outcome(model=None, final={**final, "sweep/trials": float(len(trials))})
    if spec.register_best and job.tracking.register_model and best.get("model_uri"):
        outcome.registered = parent.register(best["model_uri"], job.tracking.register_model)
        outcome.model_uri = best["model_uri"]
        parent.set_tags({"registered_model": outcome.registered})
    parent.flush()
    return outcome


def _trial_count(job: JobSpec) -> int:
    spec = job.sweep
    if spec.search == "grid":
        n = 1
        for values in spec.space.values():
            n *= 1 if isinstance(values, dict) else len(values)
        return n * (spec.num_samples or 1)
    return spec.num_samples or 4


def _TrialProgress(metric: str, total: int):
    """A Tune callback (Tune's controller runs in this process): a progress step per finished trial."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self):
            self.finished = 0
            self.best: dict[str, float] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if metric in result:
                self.best[trial.trial_id] = float(result[metric])

        def _finished(self, trial, how: str) -> None:
            self.finished += 1
            value = self.best.get(trial.trial_id)
            shown = f"{metric} {value:.4f}" if value is not None else how
            progress.step("trial", self.finished, total, {}, note=f"last trial: {shown}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finished(trial, "completed")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finished(trial, "failed")

    return TrialProgress()


class Sweep(JobKind):
    """Wraps the trial kind: the parent run is this kind's, each trial a `sweep.trial_kind` job."""

    name = "sweep"

    def check(self, job: JobSpec, plan) -> None:
        if not job.tracking.enabled:
            from orchestrator.spec.errors import ConfigError

            raise ConfigError("tracking.enabled", ["false: a sweep's trials are child runs of one MLflow run; "
                                                   "set tracking.enabled: true"])

    def describe(self, job: JobSpec, plan) -> Description:
        spec = job.sweep
        return Description(f"{job.name}-sweep",
                           f"Ray Tune {spec.search} search over {', '.join(spec.space)}; "
                           f"one child run per trial, best by {spec.metric} ({spec.mode}).",
                           tags={"sweep.search": spec.search, "sweep.scheduler": spec.scheduler},
                           params={"sweep.space": json.dumps(spec.space)})

    def run(self, ctx: Context) -> Outcome:
        return run_sweep(ctx)


KIND = Sweep()


def _summarise(grid, job: JobSpec, tracker) -> list[dict]:
    """One row per trial; a child run that ASHA stopped mid-training is closed here (FINISHED,
    tagged sweep.stopped_early) instead of being left RUNNING."""
    spec = job.sweep
    rows = []
    for res in grid:
        m = res.metrics or {}
        run_id = m.get("run_id")
        if run_id is None or spec.metric not in m:
            continue
        child = tracker.client.get_run(run_id)
        completed = child.data.tags.get("sweep.completed") == "true"
        if not completed and res.error is None and child.info.status in ("RUNNING", "FAILED"):
            # stopped by the scheduler, not by an error
            tracker.client.set_tag(run_id, "sweep.stopped_early", "true")
            tracker.client.set_terminated(run_id, "FINISHED")
        rows.append({"run_id": run_id, "label": child.data.tags.get(TRIAL_TAG, ""), "value": float(m[spec.metric]),
                     "epochs": int(m.get("epoch", 0)), "completed": completed, "started": child.info.start_time,
                     "model_uri": child.data.tags.get("sweep.model_uri"),
                     "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float))}})
    return rows
