"""What a job says on the console: its summary, its errors, its exit code (shared by every command).

Exit codes: 0 done; 2 a mistake in the YAML, an override or the data (nothing started);
1 a job that failed after it started (its MLflow run is marked FAILED, what was logged is kept);
130 interrupted (run marked KILLED).
"""
from __future__ import annotations

import os
import re
import sys
import traceback

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.spec.errors import UserError


class _Console:
    """rich output sized when printed: $COLUMNS wins; piped output gets 160 columns, not rich's 80.
    Errors go to the terminal also while the libraries' output is captured (jobs.capture)."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr

    def stream(self):
        if self.stderr:
            from orchestrator.jobs.capture import terminal

            return terminal()
        return sys.stdout

    def print(self, *args, **kwargs) -> None:
        stream = self.stream()
        width = int(os.environ.get("COLUMNS") or 0) or (None if stream.isatty() else 160)
        Console(file=stream, width=width).print(*args, **kwargs)


out = _Console()
err = _Console(stderr=True)

def fail_user(exc: UserError) -> None:
    from rich.markup import escape

    err.print(f"[bold red]consortium:[/] {escape(exc.render())}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def load(config: str, overrides: list[str] | None):
    from orchestrator.spec.loading import load_job

    return load_job(config, overrides or [])


def start_console(quiet: bool = False, verbose: bool = False, json_out: bool = False) -> None:
    """What a job may say on this console: the libraries' output to the run's logs/console.txt
    (also here with --verbose), progress live in a terminal, plain in a pipe, none with --quiet."""
    from orchestrator.jobs import capture, progress
    from orchestrator.jobs.runtime import consortium_home

    verbose = verbose or os.environ.get("CONSORTIUM_VERBOSE") == "1"
    if verbose:
        os.environ["CONSORTIUM_VERBOSE"] = "1"
    if capture.start(consortium_home(), verbose) is not None:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO")   # into the file, not onto the console
    from orchestrator.display import LiveProgress, PlainProgress

    if quiet:
        progress.listen(None)
    elif sys.stdout.isatty() and not json_out:
        progress.listen(LiveProgress())
    else:
        progress.listen(PlainProgress())


def end_progress() -> None:
    """The live display gives the terminal back (before any message of ours)."""
    from orchestrator.jobs import progress

    progress.end()
    progress.listen(None)


def stop_console() -> None:
    from orchestrator.jobs import capture

    end_progress()
    capture.stop()


DEPLOYED_ROUND = re.compile(r"^round (\d+)/(\d+): (.*)$")


def run_deployed_job(job, debug: bool, json_out: bool, quiet: bool = False) -> None:
    """federated.engine: deployment: submit to the SuperLink, stream its rounds, exit with its outcome."""
    from orchestrator.federation.submit import run_deployed
    from orchestrator.jobs import progress

    if not quiet:
        out.print(f"[bold]consortium[/] federated job [cyan]{job.name}[/] -> SuperLink {job.federated.superlink} ...",
                  highlight=False)

    def say(line: str) -> None:
        m = DEPLOYED_ROUND.match(line)
        if m and progress.listening():   # the ServerApp's round line: a progress step here
            if int(m.group(1)) == 1:
                progress.begin("round", int(m.group(2)), job.name)
            progress.step("round", int(m.group(1)), int(m.group(2)), note=m.group(3))
        elif not quiet:
            out.print(f"  {line}", highlight=False)

    execute(job, None, debug, json_out=json_out, start=lambda: run_deployed(job, say=say))


def execute(job, plan, debug: bool, resume_run_id: str | None = None, json_out: bool = False, start=None) -> None:
    from orchestrator.process import stop_on_sigterm

    stop_on_sigterm()
    try:
        from orchestrator.jobs.runner import run_job

        result = start() if start else run_job(job, plan, resume_run_id=resume_run_id)
    except UserError as exc:
        end_progress()
        fail_user(exc)
    except KeyboardInterrupt:
        from orchestrator.process import quiet_after_interrupt

        quiet_after_interrupt()
        end_progress()   # the capture stays on: dying threads of the runtime say nothing here
        err.print("[bold red]consortium:[/] interrupted; the MLflow run is marked KILLED, what was logged is kept")
        exit_interrupted()
    except Exception as exc:  # a failure after the run started: report it, keep the record
        end_progress()
        if debug:
            traceback.print_exc(file=err.stream())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cause = exc.__cause__ or exc.__context__
        extra = f" (caused by {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
        recorded = ("  the MLflow run stays RUNNING: nothing was left to end it" if getattr(exc, "run_left_open", False)
                    else "  the MLflow run is marked FAILED and keeps what was logged (logs/console.txt: what the "
                         "libraries said)")
        err.print(f"[bold red]consortium:[/] job '{job.name}' failed: {type(exc).__name__}: {first}{extra}\n"
                  f"{recorded}; rerun with --debug for the traceback",
                  highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(1)
    end_progress()
    print_result(result, job)   # still captured: what MLflow says while the summary reads the store
    if json_out:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(result)))
    stop_console()


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


SCOPE_ROWS = {"central": "the server's held-out rows", "eval": "the hospitals' / test rows",
              "site_mean": "mean over hospitals, each counts once",
              "val": "validation rows", "personal": "personal models, each at its own hospital",
              "personal_site_mean": "personal models, mean over hospitals"}


def print_result(result, job=None) -> None:
    """The headline first (accuracy/F1/AUROC or MSE/R², central and federated), then where the run
    is and the exact commands that come next; every other metric is in --json and in MLflow."""
    from rich import box

    from orchestrator.jobs.progress import headline

    final = dict(result.final)
    prefix = ""
    if not headline(final) and any(k.startswith("best/") for k in final):   # a sweep: its best trial's
        final, prefix = {k[5:]: v for k, v in final.items() if k.startswith("best/")}, "best trial, "
    keys = headline(final)
    names = list(dict.fromkeys(k.split("/", 1)[1] for k in keys))
    table = Table(box=box.SIMPLE_HEAD, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("", style="dim")
    for scope in dict.fromkeys(k.split("/", 1)[0] for k in keys):
        table.add_row(scope, *(f"{final[f'{scope}/{n}']:.4f}" if f"{scope}/{n}" in final else "-" for n in names),
                      prefix + SCOPE_ROWS.get(scope, ""))
    if keys:
        out.print(table)
    if "tstr/synthetic_accuracy" in final:   # a federated GAN: the utility of its rows
        real = final.get("tstr/real_accuracy")
        out.print(f"synthetic   train on synthetic, test on real: accuracy {final['tstr/synthetic_accuracy']:.4f}"
                  + (f" (the same classifier on real rows: {real:.4f})" if real is not None else ""), highlight=False)
    if getattr(result, "crossval", None):
        from orchestrator.jobs.crossval import table as crossval_table

        out.print(crossval_table(result.crossval))
    rest = [k for k in result.final if k not in keys and not k.endswith(("/failures", "/hospitals"))
            and not k.startswith(("time/", "ray/", "hospital_", "crossval/", "tstr/"))]
    if rest:
        out.print(f"[dim]{len(rest)} more metrics (--json, or the run in MLflow): "
                  f"{', '.join(sorted(rest)[:6])}{', ...' if len(rest) > 6 else ''}[/]", highlight=False)
    out.print(f"run         {result.run_id}  (experiment {result.experiment}, id {result.experiment_id})",
              highlight=False)
    if result.registered:
        out.print(f"model       {result.registered}", highlight=False)
    elif result.model_uri:
        out.print(f"model       {result.model_uri}", highlight=False)
    out.print(f"wall time   {result.wall_s:.1f} s", highlight=False)
    if result.tracking_uri.startswith("memory"):
        out.print("tracking    off (tracking.enabled: false): nothing was recorded", highlight=False)
        return
    for i, line in enumerate(next_commands(result, job)):
        out.print(f"{'next' if i == 0 else '':<12}{line}", highlight=False, soft_wrap=True)


def next_commands(result, job=None) -> list[str]:
    """What a person types next: the UI on this run, this run beside the previous one of its job."""
    from orchestrator.tracking.stores import resolve_uri, run_link

    uri = result.tracking_uri
    where = "" if uri == resolve_uri(None) else f" --tracking-uri {uri}"
    lines = []
    if uri.startswith(("http://", "https://")):
        lines.append(f"open {run_link(uri, result.experiment_id, result.run_id)}")
    else:
        lines.append(f"consortium ui{where}   then open "
                     f"{run_link('http://127.0.0.1:5000', result.experiment_id, result.run_id)}")
    previous = getattr(result, "previous_run", None)   # the tracking process looked it up during the job
    if job is not None and previous is None:
        from orchestrator.tracking.runs import previous_run

        previous = previous_run(uri, result.experiment_id, result.run_id, job.name)
    if previous:
        lines.append(f"consortium compare {previous} {result.run_id}{where}   (beside this job's previous run)")
    else:
        lines.append(f"consortium compare --experiment {result.experiment}{where}   (this experiment's newest runs)")
    return lines
