"""Commands on recorded runs and models: `compare`, `runs`, `models`, `ui`, `server`, `serve`, `predict`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.app import TRACKING_HELP, app
from orchestrator.console import fail_user, out
from orchestrator.spec.errors import UserError


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
