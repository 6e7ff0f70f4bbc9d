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
MASK_NAMES = ("mask", "masks", "mask_path", "segmentation", "seg", "label_map", "labelmap", "annotation", "ground_truth",
              "truth")


@dataclass
class Samples:
    """One hospital's images: their files, labels (as text) and patients (or None)."""

    name: str
    folder: Path
    paths: list[Path]
    labels: list[str]
    patients: list[str] | None = None
    notes: dict = field(default_factory=dict)   # counted, never listed: dropped_unlabelled ...
    masks: list[Path] | None = None             # segmentation: each image's mask


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


def list_masked(folder: Path, spec, name: str | None = None) -> Samples:
    """A hospital's images and their masks (segmentation): from its manifest's mask column, or each
    image's mask found beside it by `data.mask_pattern`."""
    from orchestrator.core.imaging.masks import find_mask

    name = name or folder.name
    where = f"hospital {name} ({folder})"
    manifest = _manifest(folder, spec)
    if manifest is not None:
        return _masked_manifest(manifest, spec, name, folder)
    if spec.mask_pattern is None:
        raise DataError(where, ["no manifest CSV: name where each image's mask lies with data.mask_pattern (e.g. "
                                "'{stem}_mask.png'), or list images and masks in a manifest (columns image, mask)"])
    files = sorted(p.resolve() for p in folder.rglob("*") if p.is_file() and is_image(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    masks = {find_mask(p, spec.mask_pattern) for p in files}
    images = [p for p in files if p not in masks]
    if not images:
        raise DataError(where, ["it holds no images (.png .jpg .tif .dcm .nii .nii.gz)"])
    found = [find_mask(p, spec.mask_pattern) for p in images]
    missing = [p for p, m in zip(images, found) if not m.is_file()]
    if missing:
        raise DataError(where, [f"{len(missing)} of {len(images)} images have no mask where data.mask_pattern "
                                f"'{spec.mask_pattern}' points, e.g. {_short(missing[0], folder)} -> "
                                f"{_short(find_mask(missing[0], spec.mask_pattern), folder)}"])
    return Samples(name, folder, images, [""] * len(images), None, {}, found)


def _short(path: Path, folder: Path) -> str:
    for base in (folder.resolve(), folder):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def _masked_manifest(manifest: Path, spec, name: str, folder: Path) -> Samples:
    from orchestrator.core.imaging.masks import find_mask

    where = f"hospital {name} ({manifest})"
    df = _read_manifest(manifest, where)
    columns = [str(c) for c in df.columns]
    mask_col = _pick(columns, spec.mask_column, MASK_NAMES, "data.mask_column", where)
    if mask_col is None and spec.mask_pattern is None:   # a manifest's mask column wins over the pattern
        if mask_col is None:
            raise DataError(where, [f"no column of mask paths found (columns: {', '.join(columns[:16])}): name it "
                                    "with data.mask_column, or find masks beside the images with data.mask_pattern"])
    rest = [c for c in columns if c != mask_col]
    path_col = _pick(rest, spec.image_column, PATH_NAMES, "data.image_column", where)
    if path_col is None:
        path_col = next((c for c in rest if df[c].dropna().map(lambda v: is_image(Path(v))
                                                               or (manifest.parent / v).is_file()).mean() > 0.8), None)
    if path_col is None:
        raise DataError(where, [f"no column of image paths found (columns: {', '.join(columns[:16])}): name it "
                                "with data.image_column"])
    patient_col = _pick(columns, spec.patient_column, PATIENT_NAMES, "data.patient_column", where)
    for col, what in ((path_col, "image paths"), (mask_col, "mask paths"), (patient_col, "patients")):
        if col is not None and df[col].isna().any():
            lines = (df.index[df[col].isna()] + 2).tolist()[:5]
            raise DataError(where, [f"column '{col}' ({what}) has empty cells (lines {lines})"])
    images = [(manifest.parent / str(v)).resolve() for v in df[path_col]]
    masks = [(manifest.parent / str(v)).resolve() for v in df[mask_col]] if mask_col is not None \
        else [find_mask(p, spec.mask_pattern) for p in images]
    problems = []
    for files, what in ((images, "image"), (masks, "mask")):
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            problems.append(f"{len(missing)} {what} files listed do not exist, e.g. "
                            f"{', '.join(_short(Path(m), folder) for m in missing[:3])}")
    if problems:
        raise DataError(where, problems)
    if not images:
        raise DataError(where, ["the manifest lists no images"])
    patients = [str(v).strip() for v in df[patient_col]] if patient_col else None
    return Samples(name, folder, images, [""] * len(images), patients, {}, masks)


def _read_manifest(manifest: Path, where: str):
    import pandas as pd

    try:
        return pd.read_csv(manifest, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(where, [f"cannot parse the manifest as CSV: {first}"]) from None


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
    where = f"hospital {name} ({manifest})"
    df = _read_manifest(manifest, where)
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
