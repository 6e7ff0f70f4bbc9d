"""The `consortium` Typer app every command module registers on, and the help texts they share."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated and distributed deep learning from one YAML file, tracked in MLflow.")
VERBOSE_HELP = ("Also show what MLflow, Flower and Ray say (always kept in the run as logs/console.txt).")
OVERRIDES_HELP = "Dotted overrides with YAML values, e.g. federated.rounds=5 model.hidden=[128,64]"
TRACKING_HELP = "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)"
