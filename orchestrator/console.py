"""What Consortium prints: a job's summary, a user's mistake (exit 2), and the streams they go to.
It only prints: when to print, and what runs meanwhile, is the command layer's (`orchestrator.cli`)."""
from __future__ import annotations

import os
import sys

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
        if self.stderr:   # while the libraries' output is captured (jobs.capture), still the terminal
            return getattr(sys.stderr, "terminal", None) or sys.stderr
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


SCOPE_ROWS = {"central": "the server's held-out rows", "eval": "the hospitals' / test rows",
              "site_mean": "mean over hospitals, each counts once",
              "val": "validation rows", "personal": "personal models, each at its own hospital",
              "personal_site_mean": "personal models, mean over hospitals"}


def print_result(result, job=None, tables: tuple = ()) -> None:
    """The headline first (accuracy/F1/AUROC or MSE/R², central and federated), then where the run
    is and the exact commands that come next; every other metric is in --json and in MLflow.
    `tables`: more to show after the headline (a cross-site validation's matrix)."""
    from rich import box

    from orchestrator.core.metrics import headline

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
    for extra in tables:
        out.print(extra)
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
