"""A predicted mask back on its image's own grid, written in its image's format.

The model sees every image on one grid (`readers`: squared by `data.fit`, resampled to
`data.spacing`, resized to `data.image_size`); `to_file_grid` undoes those steps with nearest
neighbours, so the mask has its image's rows and columns (and slices). `write_mask` then writes it
as the image was written: a PNG label map beside a picture (and beside a 2D DICOM), a NIfTI with
its image's affine and orientation beside a NIfTI (a 2D model's mask of a volume's middle slice:
that one slice, its affine moved to the slice), a NIfTI beside a multi-frame DICOM volume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.imaging.masks import _nearest
from orchestrator.core.imaging.readers import Preprocess, kind_of


def to_file_grid(mask: np.ndarray, grid: tuple[int, ...], pre: Preprocess,
                 spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """[size]*dims on the model's grid -> `grid` ((rows, columns) or (slices, rows, columns)), the
    reading steps undone in reverse order."""
    h, w = grid[-2:]
    if pre.dims == 2 and pre.spacing is not None:
        rows, cols = h, w
        if spacing is not None:
            rows = max(1, int(round(h * spacing[0] / pre.spacing[0])))
            cols = max(1, int(round(w * spacing[1] / pre.spacing[1])))
        out = _uncrop(mask, (rows, cols))   # the centre size x size was kept: back to the resampled size
        return _nearest(out, (h, w))
    if pre.fit == "stretch" or h == w:
        return _nearest(mask, tuple(grid))
    s = max(h, w) if pre.fit == "pad" else min(h, w)
    square = _nearest(mask, (*grid[:-2], s, s))
    return _uncrop(square, (*grid[:-2], h, w))


def _uncrop(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The centre of `mask` cut to `shape` where larger, padded with background where smaller (the
    inverse of centring an image of `shape` in `mask`'s square)."""
    out = np.zeros(shape, dtype=mask.dtype)
    src, dst = [], []
    for have, want in zip(mask.shape[-2:], shape[-2:]):
        n = min(have, want)
        src.append(slice((have - n) // 2, (have - n) // 2 + n))
        dst.append(slice((want - n) // 2, (want - n) // 2 + n))
    lead = tuple(slice(None) for _ in shape[:-2])
    out[(*lead, *dst)] = mask[(*lead, *src)]
    return out


def mask_path(image: Path, out_dir: Path | None) -> Path:
    """Where an image's predicted mask goes: beside it (or in `out_dir`) as <stem>_pred.<format>."""
    name = image.name
    kind = kind_of(image)
    stem = name[:-7] if name.lower().endswith(".nii.gz") else image.stem
    folder = out_dir or image.parent
    if kind == "nifti" or (kind == "dicom" and _is_volume_dicom(image)):
        return folder / f"{stem}_pred.nii.gz"
    return folder / f"{stem}_pred.png"


def _is_volume_dicom(path: Path) -> bool:
    try:
        import pydicom

        return int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1) > 1
    except Exception:  # noqa: BLE001 - not a DICOM: not a volume
        return False


def write_mask(labels: np.ndarray, image: Path, target: Path, dims: int) -> Path:
    """Write `labels` (on the image's grid, reader orientation) as `target` (.png or .nii.gz)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.name.endswith(".png"):
        from PIL import Image

        top = int(labels.max()) if labels.size else 0
        array = labels.astype(np.uint8) if top < 256 else labels.astype(np.uint16)
        Image.fromarray(array).save(target)
        return target
    import nibabel as nib

    if kind_of(image) != "nifti":   # a DICOM volume: its slices as the reader stacked them, 1 mm voxels
        data = np.flip(labels, axis=1).transpose(2, 1, 0)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), np.eye(4)), target)
        return target
    original: Any = nib.load(str(image))
    canonical: Any = nib.as_closest_canonical(original)
    affine = canonical.affine.copy()
    if dims == 3:
        data = np.flip(labels, axis=1).transpose(2, 1, 0)
    else:
        data = np.flipud(labels).T[:, :, None]    # the reader showed np.flipud(data.T) of the middle slice
        if len(canonical.shape) >= 3 and canonical.shape[2] > 1:
            affine = affine @ _shift(0, 0, canonical.shape[2] // 2)
    labelled: Any = nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), affine)
    back = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.io_orientation(original.affine))
    oriented: Any = labelled.as_reoriented(back)
    header = original.header.copy()
    header.set_data_dtype(np.int16)
    data = np.asarray(oriented.dataobj).astype(np.int16)
    if len(original.shape) == 2:   # a 2D NIfTI: its mask as 2D as the image
        data = data.reshape(original.shape)
    out = nib.Nifti1Image(data, oriented.affine, header)
    out.header.set_qform(oriented.affine, code=int(original.header["qform_code"]) or 1)
    out.header.set_sform(oriented.affine, code=int(original.header["sform_code"]) or 1)
    nib.save(out, target)
    return target


def _shift(x: int, y: int, z: int) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = (x, y, z)
    return t
