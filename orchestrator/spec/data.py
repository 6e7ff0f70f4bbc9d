"""`data:` where the rows come from and how each party splits and fills them."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator.spec.base import Spec

DataSource = Literal["breast_cancer", "digits", "wine", "diabetes", "xor", "sequences", "csv"]
LABELLED_SOURCES = ("breast_cancer", "digits", "wine", "xor", "sequences")   # class labels
TABULAR_SOURCES = ("breast_cancer", "digits", "wine", "diabetes", "xor")     # not sequences


class DataSpec(Spec):
    source: DataSource = Field("breast_cancer", description=(
        "bundled with scikit-learn: breast_cancer | digits | wine | diabetes (regression); generated from the "
        "seed: xor | sequences; or csv (data.path)"))
    path: str | None = Field(None, description="csv: one file, or a directory holding one CSV per hospital")
    target: str = Field("target", description="csv: the label column (a number for a regression)")
    classes: list[str] | None = Field(None, description=(
        "keep only the rows of these classes, relabelled in this order, e.g. [\"7\", \"8\", \"9\"]"))
    rows: Annotated[int, Field(ge=8, description="xor / sequences: rows generated")] = 600
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0, description=(
        "the central held-out split, and each hospital's own test split"))] = 0.2
    impute: Literal["median", "mean"] = Field("median", description=(
        "missing CSV cells: filled inside each hospital from its own training rows"))
    standardize: bool = Field(True, description=(
        "an input-scaling layer in front of the model (part of the logged model; federated: from per-hospital sums)"))

    @model_validator(mode="after")
    def _csv_needs_path(self) -> DataSpec:
        if self.source == "csv" and not self.path:
            raise ValueError("path: data.source 'csv' needs data.path (a CSV file or a directory of CSVs)")
        if self.source != "csv" and self.path:
            raise ValueError(f"path: only used with data.source 'csv' (source is '{self.source}')")
        return self
