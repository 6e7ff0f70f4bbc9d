"""Commands on logged models: `consortium crossval` (a model scored at every hospital of a job,
`orchestrator.jobs.crossval`) and `consortium sample` (rows drawn from a federated GAN's generator)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.app import app
from orchestrator.cli.session import load, start_console, stop_console
from orchestrator.console import fail_user, out
from orchestrator.spec.errors import UserError

OVERRIDES_HELP = "Dotted overrides with YAML values, e.g. model.hidden=[32] tracking.uri=..."


@app.command()
def crossval(model_uri: str = typer.Argument(..., help="A logged model: models:/NAME/VERSION or runs:/RUN_ID/model"),
             config: str = typer.Argument(..., help="The federated (or local) job whose hospitals score it"),
             overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
             also: Optional[list[str]] = typer.Option(None, "--also", help="More models beside it (repeat)"),
             log: bool = typer.Option(True, help="Log the matrix into a new run of the job's experiment."),
             json_out: bool = typer.Option(False, "--json", help="Also print the matrix as one JSON line.")) -> None:
    """Cross-site validation: a model scored at every hospital on that hospital's own test rows
    (only metrics come back), as a hospitals x models table; logged as crossval/matrix.json."""
    try:
        job = load(config, overrides)
        start_console(quiet=True, json_out=json_out)
        from orchestrator.jobs.crossval import crossval_model, table

        matrix, run_id = crossval_model(job, [model_uri, *(also or [])], log=log)
    except UserError as exc:
        fail_user(exc)

    out.print(table(matrix))
    if run_id:
        out.print(f"run         {run_id}  (experiment {job.tracking.experiment}): crossval/matrix.json, "
                  f"crossval/heatmap.png", highlight=False)
    if json_out:
        import json

        print(json.dumps(matrix))
    stop_console()



@app.command()
def sample(model_uri: str = typer.Argument(..., help="A registered generator: models:/NAME/VERSION (model.name: gan)"),
           output: Path = typer.Argument(..., help="The CSV to write"),
           rows: int = typer.Option(1000, "--rows", min=1, help="How many rows"),
           seed: int = typer.Option(0, help="Same seed, same rows"),
           tracking_uri: Optional[str] = typer.Option(None, help="MLflow store (default: as `run`)")) -> None:
    """Draw synthetic rows from a federated GAN's generator: its columns and label, in the data's units."""
    try:
        start_console(quiet=True)
        from orchestrator.tracking.generator import sample_rows

        frame = sample_rows(tracking_uri, model_uri, rows, seed)
    except UserError as exc:
        fail_user(exc)

    frame.to_csv(output, index=False)
    stop_console()
    shares = frame.iloc[:, -1].value_counts(normalize=True).round(3).to_dict()
    out.print(f"wrote {output} ({len(frame)} rows, {frame.shape[1] - 1} columns + {frame.columns[-1]}: {shares})",
              highlight=False)
