"""A hospital's image export as it is: which files, which labels, which patients.

A hospital's folder holds either class-named subfolders of images (ImageFolder layout) or a
manifest CSV: a column of image paths relative to it, a label column and optionally a patient (or
study) column, found by their names and values or named in YAML. Hospitals of one job may export
differently. Every problem names the hospital's folder (and the manifest's lines).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.core.imaging.readers import is_image
from orchestrator.spec.errors import DataError

LABEL_NAMES = ("label", "labels", "class", "diagnosis", "finding", "findings", "finding labels", "finding_labels",
               "target", "y", "category", "dx")
PATIENT_NAMES = ("patient", "patient_id", "patientid", "patient id", "subject", "subject_id", "subjectid",
                 "study", "study_id", "studyid", "case", "case_id")
PATH_NAMES = ("path", "file", "filename", "image", "image_path", "img", "filepath", "file_path", "image index")


@dataclass
class Samples:
    """One hospital's images: their files, labels (as text) and patients (or None)."""

    name: str
    folder: Path
    paths: list[Path]
    labels: list[str]
    patients: list[str] | None = None
    notes: dict = field(default_factory=dict)   # counted, never listed: dropped_unlabelled ...


def hospital_folders(spec, natural: bool) -> list[Path]:
    """data.path as hospitals: each subfolder (natural), else the folder itself (one collection)."""
    root = Path(spec.path or "")
    if not root.exists():
        raise DataError(str(root), ["data.path: folder does not exist"])
    if not root.is_dir():
        raise DataError(str(root), ["data.path: data.source images needs a folder (of images, or with one "
                                    "folder per hospital), not a file"])
    if not natural:
        return [root]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(str(root), ["federated.partition.name natural: expected one folder per hospital, found "
                                    "no folders"])
    return folders


def list_samples(folder: Path, spec, name: str | None = None) -> Samples:
    """The hospital's images and labels, from its manifest or its class folders."""
    name = name or folder.name
    manifest = _manifest(folder, spec)
    if manifest is not None:
        return _from_manifest(manifest, spec, name, folder)
    return _from_class_folders(folder, name)


def _manifest(folder: Path, spec) -> Path | None:
    if spec.manifest:
        found = folder / spec.manifest
        if not found.is_file():
            raise DataError(f"hospital {folder.name}", [f"data.manifest: {found} does not exist"])
        return found
    csvs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if len(csvs) > 1:
        raise DataError(f"hospital {folder.name}", [f"{len(csvs)} CSV files ({', '.join(p.name for p in csvs[:5])}): "
                                                   "name the manifest with data.manifest"])
    return csvs[0] if csvs else None


def _from_class_folders(folder: Path, name: str) -> Samples:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in folder.iterdir() if p.is_file() and is_image(p)][:3]
        why = (f"images lie loose in it ({', '.join(loose)} ...) with no label" if loose else "it holds no images")
        raise DataError(f"hospital {name} ({folder})", [
            f"{why}: expected class-named subfolders of images (e.g. {folder}/pneumonia/x1.png) or a manifest "
            "CSV with a column of image paths and a label column"])
    inner = [{p.name for p in c.iterdir() if p.is_dir()} for c in classes]
    shared = set.intersection(*inner) if inner else set()
    manifests = [c.name for c in classes if any(p.suffix.lower() == ".csv" for p in c.iterdir())]
    if manifests or (len(classes) > 1 and len(shared) > 1):
        why = (f"{', '.join(manifests[:5])} hold a manifest CSV" if manifests
               else f"each holds the same class folders {sorted(shared)[:5]}")
        raise DataError(f"{folder}", [
            f"its folders ({', '.join(c.name for c in classes[:5])}) look like hospitals, not classes ({why}): "
            "set federated.partition.name: natural to train one hospital per folder"])
    paths, labels = [], []
    for c in classes:
        files = sorted(p for p in c.rglob("*") if p.is_file() and is_image(p))
        paths += files
        labels += [c.name] * len(files)
    if not paths:
        raise DataError(f"hospital {name} ({folder})",
                        [f"class folders {[c.name for c in classes[:5]]} hold no image files "
                         "(.png .jpg .tif .dcm .nii .nii.gz, or DICOM files without a suffix)"])
    return Samples(name, folder, paths, labels)


def _pick(columns: list[str], wanted: str | None, names: tuple[str, ...], key: str, where: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(where, [f"{key}: column '{wanted}' not found (columns: {', '.join(columns[:16])})"])
        return wanted
    lower = {c.lower().strip(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _from_manifest(manifest: Path, spec, name: str, folder: Path) -> Samples:
    import pandas as pd

    where = f"hospital {name} ({manifest})"
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(where, [f"cannot parse the manifest as CSV: {first}"]) from None
    columns = [str(c) for c in df.columns]
    path_col = _pick(columns, spec.image_column, PATH_NAMES, "data.image_column", where)
    if path_col is None:   # the column whose values name image files
        path_col = next((c for c in columns if df[c].dropna().map(lambda v: is_image(Path(v))
                                                                     or (manifest.parent / v).is_file()).mean() > 0.8),
                        None)
    if path_col is None:
        raise DataError(where, [f"no column of image paths found (columns: {', '.join(columns[:16])}): name it "
                                "with data.image_column"])
    target = spec.target if spec.target in columns else None
    label_col = target or _pick(columns, None, LABEL_NAMES, "data.target", where)
    if label_col is None or label_col == path_col:
        raise DataError(where, [f"data.target: no label column '{spec.target}' (nor label, class, diagnosis, "
                                f"finding ...) among the columns ({', '.join(columns[:16])})"])
    patient_col = _pick(columns, spec.patient_column, PATIENT_NAMES, "data.patient_column", where)
    notes: dict = {}
    problems = []
    if df[path_col].isna().any():
        lines = (df.index[df[path_col].isna()] + 2).tolist()[:5]
        problems.append(f"column '{path_col}' (image paths) has empty cells (lines {lines})")
    unlabelled = df[label_col].isna()
    if unlabelled.any():
        if spec.missing_labels == "drop":
            notes["dropped_unlabelled"] = int(unlabelled.sum())
            df = df[~unlabelled]
        else:
            lines = (df.index[unlabelled] + 2).tolist()[:5]
            problems.append(f"column '{label_col}' (labels) has {int(unlabelled.sum())} empty cells (lines {lines}): "
                            "label them, or set data.missing_labels: drop to leave those images out")
    if patient_col is not None and df[patient_col].isna().any():
        lines = (df.index[df[patient_col].isna()] + 2).tolist()[:5]
        problems.append(f"column '{patient_col}' (patients) has empty cells (lines {lines}): every image needs "
                        "its patient for a split by patient")
    if problems:
        raise DataError(where, problems)
    paths = [(manifest.parent / str(v)).resolve() for v in df[path_col]]
    missing = [str(v) for v, p in zip(df[path_col], paths) if not p.is_file()]
    if missing:
        raise DataError(where, [f"{len(missing)} image files listed in column '{path_col}' do not exist, e.g. "
                                f"{', '.join(missing[:3])}"])
    if not paths:
        raise DataError(where, ["the manifest lists no images"])
    labels = [str(v).strip() for v in df[label_col]]
    patients = [str(v).strip() for v in df[patient_col]] if patient_col else None
    notes["manifest"] = {"paths": path_col, "labels": label_col, "patients": patient_col}
    return Samples(name, folder, paths, labels, patients, notes)


def group_ids(patients: list[str] | None) -> np.ndarray | None:
    """Patients as integers (the order of first appearance), for splits by patient."""
    if patients is None:
        return None
    index: dict[str, int] = {}
    return np.array([index.setdefault(p, len(index)) for p in patients], dtype=np.int64)
