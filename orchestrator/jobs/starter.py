"""`consortium init NAME [--data DIR_OR_CSV] [--target COL]`: a starting job YAML for the user's data.

A directory holding one CSV per hospital becomes natural silos (one hospital per file); a single CSV
is split among simulated hospitals; no data: the bundled breast-cancer demo. The target column is
the one named, else guessed from its name (target, label, outcome, ...); a numeric target with many
distinct values makes a regression. The file is validated (data opened and split) before it is kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.spec.errors import DataError, UserError

TARGET_NAMES = ("target", "label", "outcome", "class", "diagnosis", "y", "num", "disease", "status")


def _header(csv: Path):
    import pandas as pd

    try:
        return pd.read_csv(csv, nrows=500)
    except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
        raise DataError(str(csv), [f"not a readable CSV: {str(exc).splitlines()[0][:200]}"]) from None


def guess_target(columns: list[str], source: str) -> str:
    lowered = {c.lower().strip(): c for c in columns}
    for name in TARGET_NAMES:
        if name in lowered:
            return lowered[name]
    raise UserError("--target", [f"no column of {source} looks like the label ({', '.join(TARGET_NAMES)}): "
                                 f"name it with --target, one of {columns[:40]}"])


def not_features(csvs: list[Path], target: str) -> list[str]:
    """Columns of any file that look like identifiers or dates (what `run` would refuse)."""
    from orchestrator.core.columns import kind_of

    found: list[str] = []
    for csv in csvs:
        frame = _header(csv)
        for col in frame.columns:
            if col != target and col not in found and kind_of(frame[col], str(col))[0] in ("identifier", "date"):
                found.append(str(col))
    return found


def starter(name: str, data: Path | None, target: str | None) -> tuple[str, str]:
    """(YAML text, one line describing it)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UserError("NAME", [f"{name!r}: letters, digits, '-' and '_' only (it names the job and its file)"])
    if data is None:
        source, frame, csvs = "breast_cancer", None, []
    else:
        if not data.exists():
            raise DataError(str(data), ["no such file or directory: expected a CSV, or a directory with one CSV "
                                        "per hospital"])
        if data.is_dir() and _holds_images(data):
            return image_starter(name, data)
        csvs = sorted(data.glob("*.csv")) if data.is_dir() else [data]
        if not csvs:
            raise DataError(str(data), ["holds no .csv file and no image: one CSV per hospital, or image files "
                                        "(.png .jpg .tif .dcm .nii .nii.gz), are expected"])
        source, frame = "csv", _header(csvs[0])
    if frame is not None:
        target = target or guess_target(list(frame.columns), str(csvs[0]))
        for csv in csvs:
            cols = list(_header(csv).columns)
            if target not in cols:
                raise DataError(str(csv), [f"has no column '{target}' (columns: {cols[:40]}): name the label with --target"])
        y = frame[target].dropna()
        regression = y.dtype.kind == "f" and y.nunique() > 20
        drop = not_features(csvs, target)
    else:
        regression, drop = False, []
    silos = len(csvs) > 1
    lines = [f"# consortium run {name}.yaml",
             "# yaml-language-server: $schema=consortium.schema.json",
             f"# Made by `consortium init`: edit freely; `consortium validate {name}.yaml` checks it.",
             f"name: {name}", "kind: federated", "seed: 42", "data:"]
    if source == "csv":
        lines += ["  source: csv", f"  path: {data}", f"  target: {target}", "  test_fraction: 0.25"]
        if drop:
            lines.append(f"  drop: [{', '.join(drop)}]   # identifiers and dates are not features")
    else:
        lines += ["  source: breast_cancer", "  test_fraction: 0.2"]
    head = "linear" if regression else "softmax"
    lines += [f"model: {{name: mlp, hidden: [32], dropout: 0.1, head: {head}}}",
              "train:", f"  loss: {'mse' if regression else 'cross_entropy'}",
              "  optimizer: {name: adam, lr: 0.01}", "  batch_size: 32", "  epochs: 2",
              "federated:"]
    if silos:
        lines += ["  num_clients: null        # one hospital per CSV file", "  rounds: 10",
                  "  partition: {name: natural}"]
    elif regression:  # label skew is for classes: a regression's rows are shared at random
        lines += ["  num_clients: 5           # simulated hospitals sharing the rows", "  rounds: 10",
                  "  partition: {name: iid}"]
    else:
        lines += ["  num_clients: 5           # simulated hospitals sharing the rows", "  rounds: 10",
                  "  partition: {name: dirichlet, alpha: 1.0}"]
    lines += ["  strategy: {name: fedavg}", "tracking:", f"  experiment: {name}", f"  register_model: {name}"]
    what = (f"{len(csvs)} hospitals, one per CSV in {data}" if silos else
            f"5 simulated hospitals sharing {csvs[0]}" if csvs else "5 simulated hospitals on the breast-cancer demo")
    kind = "regression" if regression else "classification"
    return "\n".join(lines) + "\n", f"{what}; {kind} of '{target or 'target'}'"


def _holds_images(folder: Path, look: int = 2000) -> bool:
    from orchestrator.core.imaging.readers import is_image

    for i, p in enumerate(folder.rglob("*")):
        if i >= look:
            break
        if p.is_file() and p.suffix.lower() != ".csv" and is_image(p):
            return True
    # hospitals' folders holding only a manifest, its images kept elsewhere (paths relative to it)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir())[:5]:
        manifests = sorted(sub.glob("*.csv"))
        if len(manifests) == 1:
            import csv

            with open(manifests[0], newline="") as f:
                rows = [r for _, r in zip(range(6), csv.reader(f))][1:]
            if any(is_image(Path(cell.strip())) for row in rows for cell in row):
                return True
    return False


def image_starter(name: str, data: Path) -> tuple[str, str]:
    """A directory of image exports: one hospital per folder when its folders are hospitals (each
    with a manifest or class folders), else one collection shared by simulated hospitals. Images
    are brought to 28 or 64 pixels (what a small CNN trains on 2 cores in minutes), grey unless
    the first one is in colour."""
    from orchestrator.core.imaging.folders import hospital_folders, list_samples
    from orchestrator.core.imaging.readers import kind_of
    from orchestrator.spec.data import DataSpec

    spec = DataSpec.model_validate({"source": "images", "path": str(data)})
    try:
        list_samples(data, spec)
        silos = False
    except DataError as exc:
        if "look like hospitals" not in exc.render():
            raise
        silos = True
    folders = hospital_folders(spec, natural=silos)
    samples = list_samples(folders[0], spec)
    first = samples.paths[0]
    listed = [lab for lab in samples.labels if spec.label_separator in lab]
    multilabel = len(listed) >= max(1, len(samples.labels) // 20)   # label cells that list findings: a|b
    side, colour = _first_image(first, kind_of(first))
    depth = _slices(first, kind_of(first))
    if depth > 1:   # volumes (a 3D NIfTI, a multi-frame DICOM): read whole by a 3D CNN
        return _volume_starter(name, data, folders, silos, side, depth)
    size = 28 if side <= 32 else 64
    lines = [f"# consortium run {name}.yaml",
             "# yaml-language-server: $schema=consortium.schema.json",
             f"# Made by `consortium init`: edit freely; `consortium validate {name}.yaml` checks it.",
             f"name: {name}", "kind: federated", "seed: 42", "data:",
             "  source: images", f"  path: {data}",
             f"  image_size: {size}             # every image resized to this square (first one: {side} px)",
             f"  channels: {3 if colour else 1}                 # 1 grey, 3 RGB", "  test_fraction: 0.2",
             "  unreadable: error          # or skip: leave files that cannot be read out, counted",
             f"model: {{name: cnn, channels: [16, 32{', 64' if size > 32 else ''}], dropout: 0.1, norm: group"
             f"{', head: multilabel' if multilabel else ''}}}"
             + ("   # label cells list several findings: one sigmoid output each" if multilabel else ""),
             "train:", f"  loss: {'bce' if multilabel else 'cross_entropy'}", "  optimizer: {name: adam, lr: 0.002}",
             "  batch_size: 32",
             "  epochs: 1"]
    what = _federation(lines, name, data, len(folders), silos, "images", 15)
    task = "several findings per image" if multilabel else "classification of images"
    return "\n".join(lines) + "\n", f"{what}; {task} ({size}x{size}, {'RGB' if colour else 'grey'})"


def _slices(path: Path, kind: str) -> int:
    """How many slices the file holds: a 3D NIfTI's third axis, a DICOM's frames; 1 for a picture."""
    try:
        if kind == "nifti":
            import nibabel as nib

            image: Any = nib.load(str(path))   # a NIfTI image (nibabel types it as any file-based image)
            shape = tuple(image.shape)
            return int(shape[2]) if len(shape) >= 3 else 1
        if kind == "dicom":
            import pydicom

            return int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable here: the job's validation names it
        return 1
    return 1


def _federation(lines: list[str], name: str, data: Path, folders: int, silos: bool, what: str, rounds: int) -> str:
    """An image job's federated and tracking sections (appended to `lines`); says who holds the data."""
    lines.append("federated:")
    if silos:
        lines += ["  num_clients: null        # one hospital per folder", f"  rounds: {rounds}",
                  "  partition: {name: natural}"]
    else:
        lines += [f"  num_clients: 3           # simulated hospitals sharing the {what}", f"  rounds: {rounds}",
                  "  partition: {name: iid}"]
    lines += ["  strategy: {name: fedavg}", "tracking:", f"  experiment: {name}", f"  register_model: {name}"]
    return (f"{folders} hospitals, one per folder of {what} in {data}" if silos
            else f"3 simulated hospitals sharing the {what} in {data}")


def _volume_starter(name: str, data: Path, folders: list[Path], silos: bool, side: int, depth: int
                    ) -> tuple[str, str]:
    size = 16 if max(side, depth) <= 32 else 32
    lines = [f"# consortium run {name}.yaml",
             "# yaml-language-server: $schema=consortium.schema.json",
             f"# Made by `consortium init`: edit freely; `consortium validate {name}.yaml` checks it.",
             f"name: {name}", "kind: federated", "seed: 42", "data:",
             "  source: images", f"  path: {data}",
             f"  image_size: {size}             # every volume resized to this many voxels per axis "
             f"(first one: {side} px, {depth} slices)", "  test_fraction: 0.2",
             "  unreadable: error          # or skip: leave files that cannot be read out, counted",
             "model: {name: cnn, spatial_dims: 3, channels: [8, 16], dropout: 0.1, norm: group}",
             "train:", "  loss: cross_entropy", "  optimizer: {name: adam, lr: 0.003}", "  batch_size: 16",
             "  epochs: 2"]
    what = _federation(lines, name, data, len(folders), silos, "volumes", 10)
    return "\n".join(lines) + "\n", f"{what}; classification of 3D volumes ({size}x{size}x{size}, a 3D CNN)"


def _first_image(path: Path, kind: str) -> tuple[int, bool]:
    """(the larger side, in colour?) of one image, read as it is."""
    try:
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return max(int(ds.Rows), int(ds.Columns)), int(ds.get("SamplesPerPixel", 1) or 1) == 3
        if kind == "nifti":
            import nibabel as nib

            image: Any = nib.load(str(path))   # a NIfTI image (nibabel types it as any file-based image)
            shape = tuple(image.shape)
            return max(shape[:2]), False
        from PIL import Image

        with Image.open(path) as im:
            return max(im.size), im.mode in ("RGB", "RGBA", "P", "YCbCr")
    except Exception:  # noqa: BLE001 - a guess for the starter only; run names unreadable files
        return 64, False


def write_starter(name: str, data: Path | None, target: str | None, directory: Path, force: bool) -> tuple[Path, str]:
    from orchestrator.jobs.plan import plan_data
    from orchestrator.spec.loading import load_raw
    from orchestrator.spec.reference import schema

    path = directory / f"{name}.yaml"
    if path.exists() and not force:
        raise UserError(str(path), ["exists already: pick another NAME, or --force to replace it"])
    text, what = starter(name, data.resolve() if data is not None else None, target)
    import yaml

    plan = plan_data(load_raw(yaml.safe_load(text), str(path)))  # it must validate, data included, first
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    schema_file = directory / "consortium.schema.json"
    if not schema_file.exists():
        schema_file.write_text(schema())
    return path, f"{what}; rows per hospital: {', '.join(map(str, plan.hospital_sizes))}"
