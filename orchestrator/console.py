"""What a job says on the console: its summary, its errors, its exit code (shared by every command).

Exit codes: 0 done; 2 a mistake in the YAML, an override or the data (nothing started);
1 a job that failed after it started (its MLflow run is marked FAILED, what was logged is kept);
130 interrupted (run marked KILLED).
"""
from __future__ import annotations

import os
import sys
import traceback

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.spec.errors import UserError


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

def fail_user(exc: UserError) -> None:
    err.print(f"[bold red]consortium:[/] {exc.render()}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def load(config: str, overrides: list[str] | None):
    from orchestrator.spec.loading import load_job

    return load_job(config, overrides or [])


def run_deployed_job(job, debug: bool, json_out: bool) -> None:
    """federated.engine: deployment: submit to the SuperLink, stream its rounds, exit with its outcome."""
    from orchestrator.federation.submit import run_deployed

    out.print(f"[bold]consortium[/] federated job [cyan]{job.name}[/] -> SuperLink {job.federated.superlink} ...",
              highlight=False)
    execute(job, None, debug, json_out=json_out,
             start=lambda: run_deployed(job, say=lambda line: out.print(f"  {line}", highlight=False)))


def execute(job, plan, debug: bool, resume_run_id: str | None = None, json_out: bool = False, start=None) -> None:
    from orchestrator.jobs.runtime import stop_on_sigterm

    stop_on_sigterm()
    try:
        from orchestrator.jobs.runner import run_job

        result = start() if start else run_job(job, plan, resume_run_id=resume_run_id)
    except UserError as exc:
        fail_user(exc)
    except KeyboardInterrupt:
        from orchestrator.jobs.runtime import quiet_after_interrupt

        quiet_after_interrupt()
        err.print("[bold red]consortium:[/] interrupted; the MLflow run is marked KILLED, what was logged is kept")
        exit_interrupted()
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
    print_result(result)
    if json_out:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(result)))


BEFORE_EXIT: list = []  # e.g. `federation poc` stopping the SuperLink and SuperNodes it started


def exit_interrupted() -> None:
    """Exit 130 now. The run is already marked KILLED and its metrics flushed; a simulation's
    server thread may still be waiting on hospitals that are gone, and must not hold the exit."""
    import threading

    for stop in BEFORE_EXIT:
        stop()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise typer.Exit(130)


def print_result(result) -> None:
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
