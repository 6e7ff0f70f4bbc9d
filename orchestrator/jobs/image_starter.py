"""`consortium init` on a directory of image exports: classification (class folders or manifests;
findings listed in label cells), volumes (3D scans), or segmentation (an image and a mask per case).
Each writes a starting job the caller validates before keeping it (`starter.write_starter`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.spec.errors import DataError


def image_starter(name: str, data: Path) -> tuple[str, str]:
    """A directory of image exports: one hospital per folder when its folders are hospitals (each
    with a manifest or class folders), else one collection shared by simulated hospitals. Images
    are brought to 28 or 64 pixels (what a small CNN trains on 2 cores in minutes), grey unless
    the first one is in colour."""
    from orchestrator.core.imaging.folders import hospital_folders, list_samples
    from orchestrator.core.imaging.readers import kind_of
    from orchestrator.spec.data import DataSpec

    spec = DataSpec.model_validate({"source": "images", "path": str(data)})
    masked = _segmentation_export(data)
    if masked is not None:   # an image and a mask per case: a U-Net
        return _segmentation_starter(name, data, *masked)
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


MASK_ENDINGS = ("_mask", "_seg", "_label", "_labels", "_segmentation", "_gt")


def _segmentation_export(data: Path) -> tuple[list[Path], bool, str | None] | None:
    """(hospital folders, one per folder?, data.mask_pattern) where the export pairs each image with
    a mask: files named <stem>_mask.png (or _seg, _label ...) beside <stem>.png, or a manifest with a
    mask column; None otherwise."""
    from orchestrator.core.imaging.folders import MASK_NAMES
    from orchestrator.core.imaging.readers import is_image

    subfolders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in data.iterdir() if p.is_file() and (is_image(p) or p.suffix.lower() == ".csv")]
    silos = bool(subfolders) and not loose
    folders = subfolders if silos else [data]
    pattern, found = None, False
    for folder in folders:
        for csv in sorted(folder.glob("*.csv"))[:1]:
            header = csv.read_text(errors="replace").splitlines()[:1]
            if header and any(c.strip().lower() in MASK_NAMES for c in header[0].split(",")):
                found = True
        files = [p for _, p in zip(range(400), (p for p in folder.rglob("*") if p.is_file() and is_image(p)))]
        names = {p.name for p in files}
        for p in files:
            suffix = ".nii.gz" if p.name.lower().endswith(".nii.gz") else p.suffix
            stem = p.name[: len(p.name) - len(suffix)]
            for ending in MASK_ENDINGS:
                if stem.endswith(ending) and any(n.startswith(stem[: -len(ending)] + ".") for n in names):
                    pattern, found = pattern or f"{{stem}}{ending}{suffix}", True
    return (folders, silos, pattern) if found else None


def _segmentation_starter(name: str, data: Path, folders: list[Path], silos: bool, pattern: str | None
                          ) -> tuple[str, str]:
    from orchestrator.core.imaging.folders import list_masked
    from orchestrator.core.imaging.readers import kind_of
    from orchestrator.spec.data import DataSpec

    spec = DataSpec.model_validate({"source": "images", "path": str(data), "mask_pattern": pattern})
    first = list_masked(folders[0], spec).paths[0]
    side, colour = _first_image(first, kind_of(first))
    depth = _slices(first, kind_of(first))
    volumes = depth > 1
    size = (16 if max(side, depth) <= 48 else 32) if volumes else (32 if side <= 48 else 64)
    where = "  mask_pattern: " + (f'"{pattern}"          # each image\'s mask beside it' if pattern
                                  else "null             # the manifests' mask column names each mask")
    lines = [f"# consortium run {name}.yaml",
             "# yaml-language-server: $schema=consortium.schema.json",
             f"# Made by `consortium init`: edit freely; `consortium validate {name}.yaml` checks it.",
             f"name: {name}", "kind: federated", "seed: 42", "data:",
             "  source: images", f"  path: {data}", where,
             f"  image_size: {size}             # every {'volume' if volumes else 'image'} and its mask resized "
             f"to this (first one: {side} px{f', {depth} slices' if volumes else ''})",
             f"  channels: {3 if colour and not volumes else 1}", "  test_fraction: 0.2",
             "  unreadable: error          # or skip: leave files that cannot be read out, counted",
             f"model: {{name: unet, channels: [16, 32, 64]{', spatial_dims: 3' if volumes else ''}}}   "
             "# GroupNorm; model.patch_size: train on patches, slide windows over whole images",
             "train:", "  loss: dice_ce", "  optimizer: {name: adam, lr: 0.005}", "  batch_size: 16", "  epochs: 2"]
    what = _federation(lines, name, data, len(folders), silos, "volumes" if volumes else "images", 8)
    return "\n".join(lines) + "\n", f"{what}; segmentation ({'x'.join([str(size)] * (3 if volumes else 2))}, a U-Net)"


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
