"""`consortium` command line: run and validate jobs described by one YAML file.

Exit codes: 0 done; 2 a mistake in the YAML, an override or the data (nothing started);
1 a job that failed after it started (its MLflow run is marked FAILED, what was logged is kept);
130 interrupted (run marked KILLED).
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.console import execute, fail_user, load, out, run_deployed_job, start_console
from orchestrator.spec.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated and distributed deep learning from one YAML file, tracked in MLflow.")
VERBOSE_HELP = ("Also show what MLflow, Flower and Ray say (always kept in the run as logs/console.txt).")
OVERRIDES_HELP = "Dotted overrides with YAML values, e.g. federated.rounds=5 model.hidden=[128,64]"


@app.command()
def validate(config: str = typer.Argument(..., help="Job YAML file"),
             overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
             data: bool = typer.Option(True, help="Also open the data and check the split.")) -> None:
    """Check a job spec (and its data) without running anything."""
    try:
        job = load(config, overrides)
        if job.kind == "federated" and job.federated.engine == "deployment":
            data = False  # the hospitals hold the data; they check it in the run's census
        if data:
            from orchestrator.jobs.plan import plan_data

            plan = plan_data(job)
    except UserError as exc:
        fail_user(exc)
    msg = f"[green]ok[/] {config}: {job.kind} job '{job.name}'"
    if data and job.kind == "federated":
        msg += f", {len(plan.hospitals)} hospitals (rows: {', '.join(map(str, plan.hospital_sizes))})"
    out.print(msg, highlight=False)


@app.command()
def run(config: str = typer.Argument(..., help="Job YAML file"),
        overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
        debug: bool = typer.Option(False, help="Show the full traceback when a job fails."),
        json_out: bool = typer.Option(False, "--json", help="Also print the result as one JSON line."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the summary."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)) -> None:
    """Run a job: train, track every round/epoch in MLflow, register the model."""
    try:
        job = load(config, overrides)
        start_console(quiet, verbose, json_out)
        from orchestrator.jobs.runtime import leave_submission_dir, prepare_environment
        from orchestrator.tracking.remote import start_early

        prepare_environment()
        if job.kind == "federated" and job.federated.engine == "deployment":
            run_deployed_job(job, debug, json_out, quiet)  # the hospitals hold the data, not this machine
            return
        leave_submission_dir()
        start_early(job)   # MLflow starts importing in a process of its own while torch is imported here
        from orchestrator.jobs.plan import plan_data   # torch, ~0.9 s
        plan = plan_data(job)
    except UserError as exc:
        fail_user(exc)
    if not quiet:
        out.print(f"[bold]consortium[/] {job.kind} job [cyan]{job.name}[/] "
                  f"({len(plan.hospitals) or 'pooled'} {'hospitals' if plan.hospitals else 'data'}) ...",
                  highlight=False)
    execute(job, plan, debug, json_out=json_out)


@app.command()
def submit(config: str = typer.Argument(..., help="Job YAML file"),
           overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
           address: str = typer.Option(..., help="Ray dashboard/job server, e.g. http://127.0.0.1:8265"),
           python: str = typer.Option("auto", help="Python on the cluster that has Consortium's packages "
                                                   "(auto: the one that runs the head's Ray)"),
           wait: bool = typer.Option(True, help="Stream the job's logs and exit with its status.")) -> None:
    """Submit a job to a running Ray cluster (`ray job submit` semantics)."""
    try:
        job = load(config, overrides)
        from orchestrator.jobs.ray.submit import submit as submit_job

        code = submit_job(job, address, python=python, wait=wait, log=lambda m: out.print(m, highlight=False))
    except UserError as exc:
        fail_user(exc)
    except Exception as exc:  # the cluster's job server failed us: say so, no traceback
        from orchestrator.console import err

        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        err.print(f"[bold red]consortium:[/] submitting to {address} failed: {type(exc).__name__}: {first}",
                  highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(1)
    raise typer.Exit(code)


@app.command()
def resume(run_id: str = typer.Argument(..., help="MLflow run id of the interrupted job"),
           tracking_uri: Optional[str] = typer.Option(None, help="Store holding the run (default: as `run`)"),
           debug: bool = typer.Option(False, help="Show the full traceback when the job fails."),
           json_out: bool = typer.Option(False, "--json", help="Also print the result as one JSON line."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the summary."),
           verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)) -> None:
    """Continue an interrupted job from its last checkpoint, into the same MLflow run."""
    try:
        start_console(quiet, verbose, json_out)
        from orchestrator.jobs.resume import load_interrupted

        job = load_interrupted(run_id, tracking_uri)
        from orchestrator.jobs.plan import plan_data
        from orchestrator.jobs.runtime import prepare_environment

        prepare_environment()
        plan = plan_data(job)
    except UserError as exc:
        fail_user(exc)
    if not quiet:
        out.print(f"[bold]consortium[/] resuming {job.kind} job [cyan]{job.name}[/] (run {run_id}) ...", highlight=False)
    execute(job, plan, debug, resume_run_id=run_id, json_out=json_out)


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
        fail_user(exc)


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
        fail_user(exc)


@app.command()
def models(tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """List registered models and their versions."""
    from orchestrator.tracking.compare import models_table
    from orchestrator.tracking.runs import model_versions
    from orchestrator.tracking.store import resolve_uri

    out.print(models_table(model_versions(resolve_uri(tracking_uri))))


@app.command()
def ui(port: int = typer.Option(5000, help="Port on 127.0.0.1"),
       tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
       verbose: bool = typer.Option(False, "--verbose", "-v", help="The UI server's own log on the console "
                                                                  "(else .consortium/logs/mlflow-ui.log)")) -> None:
    """Start the MLflow UI on 127.0.0.1 for the configured store; Ctrl-C stops it and all it started."""
    from orchestrator.jobs.runtime import consortium_home
    from orchestrator.tracking.ui import serve

    try:
        serve(tracking_uri, port, log=lambda m: out.print(m, highlight=False, soft_wrap=True),
              log_file=None if verbose else consortium_home() / "logs" / "mlflow-ui.log")
    except UserError as exc:
        fail_user(exc)


@app.command()
def server(backend_store_uri: Optional[str] = typer.Option(
               None, help="Database for runs and models, e.g. postgresql://USER:PASSWORD@HOST:5432/mlflow "
                          "(default: sqlite:///./mlruns.db)"),
           artifacts: str = typer.Option("mlartifacts", help="Where the server keeps artifacts: a directory, "
                                                             "or s3://BUCKET/PATH"),
           host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)"),
           port: int = typer.Option(5000, help="Port"),
           workers: int = typer.Option(2, help="Server worker processes"),
           allowed_hosts: Optional[str] = typer.Option(
               None, help="Host headers to answer, comma-separated, e.g. 'mlflow.example.org,mlflow:5000' "
                          "(default: MLflow's, loopback and private IP addresses)"),
           log_file: Path = typer.Option(Path("mlflow-server.log"), "--log", help="Where the server's own log goes"),
           verbose: bool = typer.Option(False, help="The server's own log on the console instead")) -> None:
    """Start a team's MLflow tracking server (database store, served artifacts); Ctrl-C stops it."""
    from orchestrator.tracking.ui import serve_tracking

    try:
        serve_tracking(backend_store_uri, artifacts, host, port, workers, allowed_hosts,
                       None if verbose else log_file.resolve(), log=lambda m: out.print(m, highlight=False))
    except UserError as exc:
        fail_user(exc)


@app.command()
def serve(model_uri: str = typer.Argument(..., help="models:/NAME/VERSION (or runs:/RUN_ID/model)"),
          host: str = typer.Option("127.0.0.1", help="Address to listen on"),
          port: int = typer.Option(5001, help="Port"),
          tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Serve a logged model over HTTP (MLflow's scoring server, this environment); Ctrl-C stops it."""
    from orchestrator.tracking.serving import serve as serve_model

    try:
        serve_model(model_uri, tracking_uri, host, port, log=lambda m: out.print(m, highlight=False))
    except UserError as exc:
        fail_user(exc)


@app.command()
def predict(model_uri: str = typer.Argument(..., help="models:/NAME/VERSION (or runs:/RUN_ID/model)"),
            rows: Path = typer.Argument(..., help="CSV of rows with the model's feature columns (raw values)"),
            output: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: ROWS.predictions.csv)"),
            tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Predict rows of a CSV: each row with its class and per-class probability (regression: the value)."""
    from orchestrator.tracking.serving import predict as predict_rows

    try:
        written, n = predict_rows(model_uri, rows, output, tracking_uri)
    except UserError as exc:
        fail_user(exc)
    out.print(f"wrote {written} ({n} rows)", highlight=False)


@app.command()
def init(name: str = typer.Argument(..., help="The job's name; writes NAME.yaml"),
         data: Optional[Path] = typer.Option(None, help="A CSV, or a directory with one CSV per hospital "
                                                        "(default: the bundled breast-cancer demo)"),
         target: Optional[str] = typer.Option(None, help="The label column (default: guessed from its name)"),
         directory: Path = typer.Option(Path("."), "--dir", help="Where to write NAME.yaml"),
         force: bool = typer.Option(False, help="Replace an existing NAME.yaml")) -> None:
    """Write a starting job YAML for your data (checked before it is kept), then `consortium run NAME.yaml`."""
    from orchestrator.jobs.starter import write_starter

    try:
        path, what = write_starter(name, data, target, directory, force)
    except UserError as exc:
        fail_user(exc)
    out.print(f"[green]wrote[/] {path}: {what}\n  next: consortium run {path}", highlight=False)


@app.command()
def schema() -> None:
    """Print the job spec as JSON Schema (for editors: `consortium schema > consortium.schema.json`)."""
    from orchestrator.spec.reference import schema as job_schema

    sys.stdout.write(job_schema())


def _federation() -> None:
    from orchestrator.federation.cli import fed_app
    from orchestrator.models_cli import crossval, sample

    app.command()(crossval)
    app.command()(sample)
    app.add_typer(fed_app, name="federation")


_federation()


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
