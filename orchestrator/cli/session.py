"""What a command that runs a job does around it: the console's channels (the libraries' output
captured into the run, progress live or plain), the job itself, and the exit code it ends with.
`orchestrator.console` prints; this module decides when."""
from __future__ import annotations

import os
import re
import sys
import traceback

import typer

from orchestrator.console import err, fail_user, out, print_result
from orchestrator.spec.errors import UserError


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


def run_deployed_job(job, debug: bool, json_out: bool, quiet: bool = False, on_interrupt=None) -> None:
    """federated.engine: deployment: submit to the SuperLink, stream its rounds, exit with its outcome."""
    from orchestrator.federation.submit import run_deployed
    from orchestrator.jobs import progress

    if not quiet:
        out.print(f"[bold]consortium[/] federated job [cyan]{job.name}[/] -> SuperLink {job.federated.superlink} ...",
                  highlight=False)

    def say(line: str) -> None:
        m = DEPLOYED_ROUND.match(line)
        if m and progress.listening():   # the ServerApp's round line: a progress step here
            progress.step("round", int(m.group(1)), int(m.group(2)), note=m.group(3))
        elif not quiet:
            out.print(f"  {line}", highlight=False)

    def start():
        if progress.listening():   # the rounds' clock starts with the submission
            progress.begin("round", job.federated.rounds, job.name)
        return run_deployed(job, say=say)

    execute(job, None, debug, json_out=json_out, start=start, on_interrupt=on_interrupt)


def execute(job, plan, debug: bool, resume_run_id: str | None = None, json_out: bool = False, start=None,
            on_interrupt=None) -> None:
    """Run the job with the console around it; exit 2 for a user's mistake, 1 for a job that failed
    after it started, 130 when interrupted (`on_interrupt()` first: what this command started)."""
    from orchestrator.process import stop_on_sigterm

    stop_on_sigterm()
    try:
        from orchestrator.jobs.lifecycle import Resume
        from orchestrator.jobs.runner import run_job

        result = start() if start else run_job(job, Resume(resume_run_id) if resume_run_id else None, plan)
    except UserError as exc:
        end_progress()
        fail_user(exc)
    except KeyboardInterrupt:
        from orchestrator.process import quiet_after_interrupt

        quiet_after_interrupt()
        end_progress()   # the capture stays on: dying threads of the runtime say nothing here
        err.print("[bold red]consortium:[/] interrupted; the MLflow run is marked KILLED, what was logged is kept")
        exit_interrupted(on_interrupt)
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
    tables: tuple = ()
    if result.crossval:
        from orchestrator.jobs.crossval import table as crossval_table

        tables = (crossval_table(result.crossval),)
    print_result(result, job, tables)   # still captured: what MLflow says while the summary reads the store
    if json_out:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(result)))
    stop_console()


def exit_interrupted(on_interrupt=None) -> None:
    """Exit 130 now. The run is already marked KILLED and its metrics flushed; a simulation's
    server thread may still be waiting on hospitals that are gone, and must not hold the exit.
    `on_interrupt()` stops what the command started (`federation poc`: its SuperLink and SuperNodes)."""
    import threading

    if on_interrupt is not None:
        on_interrupt()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise typer.Exit(130)
