"""`consortium` command line: run and validate jobs described by one YAML file.

Exit codes: 0 done; 2 a mistake in the YAML, an override or the data (nothing started);
1 a job that failed after it started (its MLflow run is marked FAILED, what was logged is kept);
130 interrupted (run marked KILLED).
"""
from __future__ import annotations

import gc
import os
import sys
import traceback
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.spec.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated and distributed deep learning from one YAML file, tracked in MLflow.")
class _Console:
    """rich output sized when printed: $COLUMNS wins; piped output gets 160 columns, not rich's 80."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr

    def print(self, *args, **kwargs) -> None:
        stream = sys.stderr if self.stderr else sys.stdout
        width = int(os.environ.get("COLUMNS") or 0) or (None if stream.isatty() else 160)
        Console(stderr=self.stderr, width=width).print(*args, **kwargs)


out = _Console()
err = _Console(stderr=True)

OVERRIDES_HELP = "Dotted overrides with YAML values, e.g. federated.rounds=5 model.hidden=[128,64]"


def _fail_user(exc: UserError) -> None:
    err.print(f"[bold red]consortium:[/] {exc.render()}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _load(config: str, overrides: list[str] | None):
    from orchestrator.spec.loading import load_job

    return load_job(config, overrides or [])


@app.command()
def validate(config: str = typer.Argument(..., help="Job YAML file"),
             overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
             data: bool = typer.Option(True, help="Also open the data and check the split.")) -> None:
    """Check a job spec (and its data) without running anything."""
    try:
        job = _load(config, overrides)
        if data:
            from orchestrator.jobs.plan import plan_data

            plan = plan_data(job)
    except UserError as exc:
        _fail_user(exc)
    msg = f"[green]ok[/] {config}: {job.kind} job '{job.name}'"
    if data and job.kind == "federated":
        msg += f", {len(plan.hospitals)} hospitals (rows: {', '.join(map(str, plan.hospital_sizes))})"
    out.print(msg, highlight=False)


@app.command()
def run(config: str = typer.Argument(..., help="Job YAML file"),
        overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
        debug: bool = typer.Option(False, help="Show the full traceback when a job fails."),
        json_out: bool = typer.Option(False, "--json", help="Also print the result as one JSON line.")) -> None:
    """Run a job: train, track every round/epoch in MLflow, register the model."""
    try:
        job = _load(config, overrides)
        from orchestrator.jobs.plan import plan_data
        from orchestrator.jobs.runtime import leave_submission_dir, prepare_environment

        prepare_environment()
        leave_submission_dir()
        plan = plan_data(job)
    except UserError as exc:
        _fail_user(exc)
    out.print(f"[bold]consortium[/] {job.kind} job [cyan]{job.name}[/] "
              f"({len(plan.hospitals) or 'pooled'} {'hospitals' if plan.hospitals else 'data'}) ...",
              highlight=False)
    _execute(job, plan, debug, json_out=json_out)


def _execute(job, plan, debug: bool, resume_run_id: str | None = None, json_out: bool = False) -> None:
    from orchestrator.jobs.runtime import stop_on_sigterm

    stop_on_sigterm()
    try:
        from orchestrator.jobs.runner import run_job

        result = run_job(job, plan, resume_run_id=resume_run_id)
    except UserError as exc:
        _fail_user(exc)
    except KeyboardInterrupt:
        from orchestrator.jobs.runtime import quiet_after_interrupt

        quiet_after_interrupt()
        err.print("[bold red]consortium:[/] interrupted; the MLflow run is marked KILLED, what was logged is kept")
        _exit_interrupted()
    except Exception as exc:  # a failure after the run started: report it, keep the record
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cause = exc.__cause__ or exc.__context__
        extra = f" (caused by {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
        err.print(f"[bold red]consortium:[/] job '{job.name}' failed: {type(exc).__name__}: {first}{extra}\n"
                  f"  the MLflow run is marked FAILED and keeps what was logged; rerun with --debug for the traceback",
                  highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(1)
    _print_result(result)
    if json_out:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(result)))


@app.command()
def submit(config: str = typer.Argument(..., help="Job YAML file"),
           overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
           address: str = typer.Option(..., help="Ray dashboard/job server, e.g. http://127.0.0.1:8265"),
           python: str = typer.Option("python", help="Python on the cluster that has Consortium installed"),
           wait: bool = typer.Option(True, help="Stream the job's logs and exit with its status.")) -> None:
    """Submit a job to a running Ray cluster (`ray job submit` semantics)."""
    try:
        job = _load(config, overrides)
        from orchestrator.jobs.ray.submit import submit as submit_job

        code = submit_job(job, address, python=python, wait=wait, log=lambda m: out.print(m, highlight=False))
    except UserError as exc:
        _fail_user(exc)
    raise typer.Exit(code)


@app.command()
def resume(run_id: str = typer.Argument(..., help="MLflow run id of the interrupted job"),
           tracking_uri: Optional[str] = typer.Option(None, help="Store holding the run (default: as `run`)"),
           debug: bool = typer.Option(False, help="Show the full traceback when the job fails."),
           json_out: bool = typer.Option(False, "--json", help="Also print the result as one JSON line.")) -> None:
    """Continue an interrupted job from its last checkpoint, into the same MLflow run."""
    try:
        from orchestrator.jobs.resume import load_interrupted

        job = load_interrupted(run_id, tracking_uri)
        from orchestrator.jobs.plan import plan_data
        from orchestrator.jobs.runtime import prepare_environment

        prepare_environment()
        plan = plan_data(job)
    except UserError as exc:
        _fail_user(exc)
    out.print(f"[bold]consortium[/] resuming {job.kind} job [cyan]{job.name}[/] (run {run_id}) ...", highlight=False)
    _execute(job, plan, debug, resume_run_id=run_id, json_out=json_out)


TRACKING_HELP = "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)"


@app.command()
def compare(run_ids: Optional[list[str]] = typer.Argument(None, help="Runs to compare (default: the newest)"),
            experiment: Optional[str] = typer.Option("consortium", help="Experiment to take runs from"),
            metric: str = typer.Option("eval/accuracy", help="Metric for the final/best columns and the plot"),
            plot: Optional[str] = typer.Option(None, help="Write the metric per round/epoch of every run here (PNG)"),
            limit: int = typer.Option(10, help="How many of the newest runs, when no ids are given"),
            tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Runs side by side: what differs, final and best metric, wall time, registered model."""
    try:
        from orchestrator.tracking import compare as cmp
        from orchestrator.tracking.runs import find_runs
        from orchestrator.tracking.store import resolve_uri

        uri = resolve_uri(tracking_uri)
        runs = find_runs(uri, None if run_ids else experiment, run_ids, limit)
        if not runs:
            raise UserError(f"experiment {experiment}", ["has no runs yet: `consortium run CONFIG` first"])
        table, _ = cmp.comparison(uri, runs, metric)
        out.print(table)
        if plot:
            cmp.plot(uri, runs, metric, plot)
            out.print(f"wrote {plot}", highlight=False)
    except UserError as exc:
        _fail_user(exc)


@app.command()
def runs(experiment: Optional[str] = typer.Option(None, help="Only this experiment (default: all)"),
         limit: int = typer.Option(20, help="How many of the newest runs"),
         tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """List recent runs."""
    try:
        from orchestrator.tracking.compare import runs_table
        from orchestrator.tracking.runs import find_runs
        from orchestrator.tracking.store import resolve_uri

        out.print(runs_table(find_runs(resolve_uri(tracking_uri), experiment, None, limit)))
    except UserError as exc:
        _fail_user(exc)


@app.command()
def models(tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """List registered models and their versions."""
    from orchestrator.tracking.compare import models_table
    from orchestrator.tracking.runs import model_versions
    from orchestrator.tracking.store import resolve_uri

    out.print(models_table(model_versions(resolve_uri(tracking_uri))))


@app.command()
def ui(port: int = typer.Option(5000, help="Port on 127.0.0.1"),
       tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Start the MLflow UI on 127.0.0.1 for the configured store; Ctrl-C stops it and all it started."""
    from orchestrator.tracking.ui import serve

    try:
        serve(tracking_uri, port, log=lambda m: out.print(m, highlight=False))
    except UserError as exc:
        _fail_user(exc)


def _exit_interrupted() -> None:
    """Exit 130 now. The run is already marked KILLED and its metrics flushed; a simulation's
    server thread may still be waiting on hospitals that are gone, and must not hold the exit."""
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise typer.Exit(130)


def _print_result(result) -> None:
    table = Table(title="final metrics", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(result.final):
        if k.endswith(("/failures", "/hospitals")) or k.startswith(("time/", "ray/")):
            continue
        table.add_row(k, f"{result.final[k]:.4f}")
    out.print(table)
    out.print(f"experiment  {result.experiment} (id {result.experiment_id})", highlight=False)
    out.print(f"run id      {result.run_id}", highlight=False)
    out.print(f"tracking    {result.tracking_uri}", highlight=False)
    if result.registered:
        out.print(f"model       {result.registered}", highlight=False)
    elif result.model_uri:
        out.print(f"model       {result.model_uri}", highlight=False)
    out.print(f"wall time   {result.wall_s:.1f} s", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        # Everything is recorded and the process is about to end. Left alone, Python's final
        # garbage collection walks the whole heap (torch, MLflow, Flower, Ray) before exiting:
        # ~3 s after a tracked job. Frozen objects are skipped; the OS reclaims the memory anyway.
        gc.freeze()


if __name__ == "__main__":
    main()
