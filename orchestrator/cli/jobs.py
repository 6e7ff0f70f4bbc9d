"""Commands that run jobs: `validate`, `run`, `submit`, `resume`, `init`, `schema`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.app import OVERRIDES_HELP, VERBOSE_HELP, app
from orchestrator.cli.session import execute, load, run_deployed_job, start_console
from orchestrator.console import err, fail_user, out
from orchestrator.spec.errors import UserError


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
