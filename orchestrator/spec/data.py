"""`data:` where the rows come from and how each party splits and fills them."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.spec.base import Spec

DataSource = Literal["breast_cancer", "digits", "wine", "diabetes", "xor", "sequences", "csv", "images"]
FILE_SOURCES = ("csv", "images")   # the user's own files (data.path, or each hospital's --data)
IMAGE_ONLY = ("image_size", "channels", "fit", "window", "spacing", "image_column", "patient_column", "manifest",
              "unreadable", "mask_column", "mask_pattern")
LABELLED_SOURCES = ("breast_cancer", "digits", "wine", "xor", "sequences")   # class labels
TABULAR_SOURCES = ("breast_cancer", "digits", "wine", "diabetes", "xor")     # not sequences


class DataSpec(Spec):
    source: DataSource = Field("breast_cancer", description=(
        "bundled with scikit-learn: breast_cancer | digits | wine | diabetes (regression); generated from the "
        "seed: xor | sequences; or csv (data.path); or images (data.path: PNG/JPEG/TIFF, DICOM, NIfTI)"))
    path: str | None = Field(None, description=(
        "csv: one file, or a directory holding one CSV per hospital; images: one folder of images, or "
        "(federated.partition.name: natural) a directory with one folder per hospital"))
    target: str = Field("target", description=(
        "csv: the label column (a number for a regression); images: the manifest's label column "
        "(else found by its name: label, class, diagnosis, finding ...)"))
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
    missing_labels: Literal["error", "drop"] = Field("error", description=(
        "rows (csv) or images (manifest) without a label: an error naming them, or left out and counted "
        "per hospital in the run (data.dropped_unlabelled)"))
    # ---- images
    image_size: Annotated[int, Field(ge=4, le=1024, description=(
        "images: every image is resized to image_size x image_size pixels"))] = 32
    channels: Literal[1, 3] = Field(1, description="images: 1 grey (RGB by luminance) | 3 RGB (grey repeated)")
    fit: Literal["pad", "crop", "stretch"] = Field("pad", description=(
        "images: a non-square image padded to a square with black, its centre square cropped, or stretched"))
    window: tuple[float, float] | None = Field(None, description=(
        "images, DICOM / NIfTI: [centre, width] of the intensity window in the file's units after the "
        "rescale (e.g. [40, 400] for CT soft tissue); default: the DICOM file's own window, else each "
        "image's min..max"))
    spacing: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] | None = Field(None, description=(
        "images, DICOM / NIfTI: [row, column] millimetres per pixel: each image is resampled to it from its "
        "own spacing (PixelSpacing, the NIfTI zooms), then its centre image_size x image_size kept (a field of "
        "view of image_size x spacing mm, the same at every scanner); a picture, which has no spacing, is "
        "taken as it is"))
    manifest: str | None = Field(None, description=(
        "images: the CSV in each hospital's folder that lists its images (default: its only *.csv; "
        "none: class-named subfolders)"))
    image_column: str | None = Field(None, description=(
        "images: the manifest's column of image paths, relative to the manifest (default: found by its values)"))
    patient_column: str | None = Field(None, description=(
        "images: the manifest's patient (or study) column: all of a patient's images fall on one side of "
        "every train/test split (default: found by its name: patient, patient_id, subject ...)"))
    label_separator: str = Field("|", min_length=1, description=(
        "images, model.head multilabel: what separates an image's findings in its label cell, e.g. "
        "'Effusion|Infiltration' (NIH ChestX-ray14's 'Finding Labels')"))
    no_finding: str | None = Field("No Finding", description=(
        "images, model.head multilabel: the label cell of an image with no finding (no output set); "
        "null: every value is a finding"))
    mask_column: str | None = Field(None, description=(
        "images, segmentation: the manifest's column of mask paths, relative to the manifest (default: found by "
        "its name: mask, segmentation, label_map, seg ...)"))
    mask_pattern: str | None = Field(None, description=(
        "images, segmentation: where each image's mask lies beside it, e.g. '{stem}_mask.png' or "
        "'../masks/{name}' ({name}: the image's file name, {stem}: without its suffix, {suffix}: the suffix, "
        "e.g. .nii.gz); files that are masks are not images. Masks: PNG label maps, NIfTI label volumes, "
        "DICOM SEG"))
    unreadable: Literal["error", "skip"] = Field("error", description=(
        "images: a file that cannot be read stops the job before training (naming it and its hospital), "
        "or is skipped and counted in the run (data.skipped_unreadable)"))

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
        if self.source not in FILE_SOURCES and self.path:
            raise ValueError(f"path: only used with data.source 'csv' or 'images' (source is '{self.source}')")
        if self.source != "images":
            used = [k for k in IMAGE_ONLY if getattr(self, k) != type(self).model_fields[k].default]
            if used:
                raise ValueError(f"{used[0]}: only used with data.source 'images' (source is '{self.source}')")
        if self.mask_column and self.mask_pattern:
            raise ValueError("mask_pattern: masks are named by data.mask_column or found by data.mask_pattern, not both")
        if self.mask_pattern is not None and not any(k in self.mask_pattern for k in ("{stem}", "{name}")):
            raise ValueError(f"mask_pattern: '{self.mask_pattern}' names the same file for every image: use "
                             "{stem} or {name}, e.g. '{stem}_mask.png'")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window: [centre, width] needs a positive width (got {list(self.window)})")
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
