"""`data:` where the rows come from and how each party splits and fills them."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

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
    columns: list[str] | None = Field(None, description=(
        "csv: the column names of files without a header row (e.g. the raw UCI processed.*.data files)"))
    na_values: list[str] = Field(default_factory=list, description=(
        "csv: cell values that mean missing, besides empty cells and NA/NaN, e.g. ['?']"))
    drop: list[str] = Field(default_factory=list, description=(
        "csv: columns that are not features (identifiers, dates, free text), left out at every hospital"))
    features: list[str] | None = Field(None, description="csv: keep only these feature columns")
    relabel: dict[str, str] | None = Field(None, description=(
        "csv: target values renamed before training, e.g. {'0': healthy, '1': disease, '2': disease}; "
        "a value not listed is an error"))
    max_categories: Annotated[int, Field(ge=1, le=1000, description=(
        "csv text columns: the most frequent values across the hospitals (agreed from their counts) each "
        "get an input; the rest, and values first seen at evaluation, are 'other'"))] = 20

    @field_validator("relabel", mode="before")
    @classmethod
    def _labels_as_text(cls, v):
        """YAML reads `{0: healthy, 1: disease}` with number keys; labels are compared as text."""
        def text(x):
            return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)

        return {text(k): text(val) for k, val in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _csv_needs_path(self) -> DataSpec:
        # csv without a path: refused with the job (spec.job), unless the hospitals hold the files
        if self.source != "csv" and self.path:
            raise ValueError(f"path: only used with data.source 'csv' (source is '{self.source}')")
        if self.source != "csv":
            used = [k for k in ("columns", "na_values", "drop", "features", "relabel") if getattr(self, k)]
            if used:
                raise ValueError(f"{used[0]}: only used with data.source 'csv' (source is '{self.source}')")
        if self.target in self.drop:
            raise ValueError(f"drop: '{self.target}' is data.target, the label: it cannot be dropped")
        if self.features is not None:
            both = sorted(set(self.features) & set(self.drop))
            if both:
                raise ValueError(f"features: {both} are also in data.drop: name a column in one of them")
            if self.target in self.features:
                raise ValueError(f"features: '{self.target}' is data.target, the label, not a feature")
        if self.columns is not None:
            twice = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if twice:
                raise ValueError(f"columns: {twice} named twice")
            if self.target not in self.columns:
                raise ValueError(f"columns: data.target '{self.target}' is not among the names given")
        return self
