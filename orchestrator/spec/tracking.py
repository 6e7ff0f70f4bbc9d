"""`tracking:` and `explain:` what MLflow records, and the explanations logged after training."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$")
_STORE = re.compile(r"^(sqlite|file|https?|postgresql|mysql|mssql|databricks)[:+]|^/")


class TrackingSpec(Spec):
    uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else a SQLite store ./mlruns.db")
    experiment: Annotated[str, Field(min_length=1, description="MLflow experiment")] = "consortium"
    register_model: str | None = Field(None, description="register the model under this name (null: don't)")
    log_model: bool = Field(True, description="log the model with its signature and input example")
    enabled: bool = Field(True, description=(
        "false: metrics in memory only, nothing written, MLflow not imported (dry runs, benchmarks)"))

    @model_validator(mode="after")
    def _check(self) -> TrackingSpec:
        if not self.enabled and self.register_model is not None:
            raise ValueError("register_model: registering needs tracking.enabled: true (set register_model: null)")
        if self.register_model is not None and not _MODEL_NAME.match(self.register_model):
            raise ValueError(f"register_model: {self.register_model!r} is not a valid model name: use letters, "
                             f"digits, '_', '-' and '.', starting with a letter or digit")
        if self.uri is not None and not _STORE.match(self.uri):
            raise ValueError(f"uri: {self.uri!r} is not an MLflow store: expected sqlite:///path.db, "
                             f"http://host:port, a file path, or a database URI")
        return self


class ExplainSpec(Spec):
    """After training: permutation feature importance (tabular models) and integrated gradients
    (every model family) on the held-out rows, or, federated with no central split, integrated
    gradients by each hospital on its own test rows (only the per-input means are sent)."""

    enabled: bool = Field(True, description="explain the trained model")
    integrated_gradients: bool = Field(True, description=(
        "Captum's integrated gradients from the consortium's mean row: per feature (tabular), per pixel "
        "(cnn), per time step (sequences)"))
    repeats: Annotated[int, Field(ge=1, description="permutations per feature")] = 5
    max_rows: Annotated[int, Field(ge=10, description="held-out rows used at most")] = 2000
    top: Annotated[int, Field(ge=1, description="features in the bar chart")] = 20
