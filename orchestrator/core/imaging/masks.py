"""One mask file as the model learns it: a label map [size, size] (or [size, size, size] for a 3D
network) of the file's own label values, on the same grid as its image (`readers`).

PNG (and any Pillow label map: grey, palette, 16-bit), NIfTI label volumes through nibabel (reoriented
to RAS+ as the image is) and DICOM SEG through pydicom (each segment's frames painted with its
segment number; fractional segments at half their maximum), or a plain DICOM of integer labels. The
mask follows its image's geometry step by step (`data.fit`, `data.spacing`, the resize), with
nearest-neighbour sampling so a label never blends into another. A mask whose grid differs from its
image's, or whose values are not whole numbers, raises BadMask naming why; the caller names the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.imaging.readers import Preprocess, UnreadableImage, _decoded, _pair, kind_of


class BadMask(UnreadableImage):
    """A mask that cannot label its image: unreadable, another grid, or values that are not labels."""


def read_mask(path: Path, pre: Preprocess, image_shape: tuple[int, ...] | None = None
              ) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(labels [size]*dims int32, the file's mm per pixel or None). `image_shape`: its image's grid
    as read (rows, columns) or (slices, rows, columns): a mask on another grid is refused."""
    kind = kind_of(path)
    labels, spacing = _decoded(kind, lambda: _decode(path, kind, pre.dims))
    if image_shape is not None and tuple(labels.shape) != tuple(image_shape):
        raise BadMask(f"mask of shape {'x'.join(map(str, labels.shape))}, but its image is "
                      f"{'x'.join(map(str, image_shape))}: a mask labels every pixel of its image")
    if pre.dims == 3:
        return fit_volume(labels, pre.size, pre.fit), spacing
    return fit_plane(labels, pre, spacing), spacing


def _decode(path: Path, kind: str, dims: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
    if kind == "nifti":
        return _nifti_labels(path, dims)
    if kind == "dicom":
        return _dicom_labels(path, dims)
    if dims == 3:
        raise BadMask("a 2D picture: a 3D network's masks are label volumes (NIfTI, DICOM SEG)")
    return _picture_labels(path), None


def _whole(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise BadMask("its values are not whole numbers: a mask holds labels (0 background, 1, 2 ...), "
                          "not intensities")
    if values.size and values.min() < 0:
        raise BadMask(f"negative label {int(values.min())}: labels are 0 (background), 1, 2 ...")
    return values.astype(np.int32)


def _picture_labels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim == 3:   # RGB(A) written by a tool that saves labels as grey in colour: equal channels only
        rgb = a[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise BadMask("a colour image: a mask is a label map (grey values or a palette's indices)")
        a = rgb[..., 0]
    return _whole(a)


def _canonical(path: Path):
    import nibabel as nib

    return nib.as_closest_canonical(nib.load(str(path)))


def _nifti_labels(path: Path, dims: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
    img = _canonical(path)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3:
        data = data[..., 0]
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    if dims == 3:
        if data.ndim != 3:
            raise BadMask(f"a NIfTI of shape {data.shape}: a 3D network's mask is a label volume")
        return _whole(np.flip(data.transpose(2, 1, 0), axis=1)), (zooms[2], zooms[1], zooms[0])
    if data.ndim == 3:
        data = data[:, :, data.shape[2] // 2]   # the middle axial slice, as the 2D image reader takes
    if data.ndim != 2:
        raise BadMask(f"a NIfTI of shape {data.shape}: expected a 2D label map or a label volume")
    return _whole(np.flipud(data.T)), (zooms[1], zooms[0]) if len(zooms) >= 2 else None


def _dicom_labels(path: Path, dims: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise BadMask(f"not a DICOM file ({str(exc).strip()[:120]})") from None
    if "PixelData" not in ds:
        raise BadMask(f"a DICOM file without pixel data (modality {ds.get('Modality', '?')})")
    frames = np.asarray(ds.pixel_array)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frames = frames.reshape(n, *frames.shape[-2:]) if frames.ndim == 2 or n == 1 else frames
    if ds.get("Modality") != "SEG":   # a plain DICOM of labels: its stored values are the labels
        spacing = _pair(ds.get("PixelSpacing"))
        if dims == 3:
            if n < 2:
                raise BadMask("a single-frame DICOM: a 3D network's mask is a label volume")
            return _whole(frames), None
        return _whole(frames[n // 2]), spacing
    return _segmentation(ds, frames, dims)


def _segmentation(ds, frames: np.ndarray, dims: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A DICOM SEG as one label map: each frame's segment number painted where it is set, frames at
    one position forming one slice (sorted along the slice normal, inferior first for axial)."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])

    def item(i: int, sequence: str):
        for group in (per_frame[i] if i < len(per_frame) else None, shared):
            if group is not None and sequence in group:
                return group[sequence][0]
        return None

    orientation = item(0, "PlaneOrientationSequence")
    cosines = np.asarray(orientation.ImageOrientationPatient, dtype=float) if orientation is not None \
        else np.array([1, 0, 0, 0, 1, 0], dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    threshold = 1
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        threshold = max(1, int(ds.get("MaximumFractionalValue", 255)) // 2 + 1)
    slots: dict[float, np.ndarray] = {}
    for i in range(len(frames)):
        ident = item(i, "SegmentIdentificationSequence")
        segment = int(ident.ReferencedSegmentNumber) if ident is not None else 1
        where = item(i, "PlanePositionSequence")
        position = float(np.dot(np.asarray(where.ImagePositionPatient, dtype=float), normal)) if where is not None \
            else float(i)
        key = round(position, 3)
        plane = slots.setdefault(key, np.zeros(frames.shape[-2:], dtype=np.int32))
        plane[frames[i] >= threshold] = segment
    ordered = [slots[k] for k in sorted(slots)]
    measures = item(0, "PixelMeasuresSequence")
    spacing = _pair(measures.get("PixelSpacing")) if measures is not None else None
    if dims == 3:
        if len(ordered) < 2:
            raise BadMask("a DICOM SEG of one slice: a 3D network's mask is a label volume")
        return np.stack(ordered), None
    return ordered[len(ordered) // 2], spacing


def image_grid(path: Path, dims: int) -> tuple[int, ...] | None:
    """The grid an image file is read on (rows, columns), or (slices, rows, columns), from its header
    alone; None where the header does not say (the mask is then taken on trust)."""
    kind = kind_of(path)
    try:
        if kind == "picture":
            from PIL import Image

            with Image.open(path) as im:
                return (im.size[1], im.size[0])
        if kind == "nifti":
            import nibabel as nib

            img: Any = nib.load(str(path))
            ornt = nib.orientations.io_orientation(img.affine)
            shape = [0, 0, 0]
            for axis, (target, _) in enumerate(ornt[:3]):
                shape[int(target)] = int(img.shape[axis]) if axis < len(img.shape) else 1
            x, y, z = shape
            return (z, y, x) if dims == 3 else (y, x)
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        return (int(ds.get("NumberOfFrames", 1) or 1), rows, cols) if dims == 3 else (rows, cols)
    except Exception:  # noqa: BLE001 - the image's own reader names its problem
        return None


def image_spacing(path: Path) -> tuple[float, float] | None:
    """An image file's (row, column) mm per pixel from its header (None: a picture, or unsaid)."""
    kind = kind_of(path)
    try:
        if kind == "nifti":
            zooms = _canonical(path).header.get_zooms()
            return (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else None
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return _pair(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))
    except Exception:  # noqa: BLE001 - the image's own reader names its problem
        return None
    return None


# --------------------------------------------------------------------------- geometry, nearest neighbour
def _nearest(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if tuple(labels.shape) == tuple(shape):
        return labels.astype(np.int32)
    t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="nearest-exact")[0, 0].numpy().astype(np.int32)


def _square(labels: np.ndarray, fit: str) -> np.ndarray:
    """The last two axes squared as the image's are (`readers.resize`): padded with background, or cropped."""
    h, w = labels.shape[-2:]
    if fit == "crop" and h != w:
        s = min(h, w)
        return labels[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    if fit == "pad" and h != w:
        s = max(h, w)
        out = np.zeros((*labels.shape[:-2], s, s), dtype=labels.dtype)
        out[..., (s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = labels
        return out
    return labels


def fit_plane(labels: np.ndarray, pre: Preprocess, spacing: tuple[float, ...] | None) -> np.ndarray:
    """[H, W] -> [size, size] as `readers.read_image` moves its image."""
    if pre.spacing is None:
        return _nearest(_square(labels, pre.fit), (pre.size, pre.size))
    if spacing is not None:
        rows = max(1, int(round(labels.shape[0] * spacing[0] / pre.spacing[0])))
        cols = max(1, int(round(labels.shape[1] * spacing[1] / pre.spacing[1])))
        labels = _nearest(labels, (rows, cols))
    h, w = labels.shape
    out = np.zeros((pre.size, pre.size), dtype=np.int32)
    sh, sw = min(h, pre.size), min(w, pre.size)
    top, left = (h - sh) // 2, (w - sw) // 2
    otop, oleft = (pre.size - sh) // 2, (pre.size - sw) // 2
    out[otop : otop + sh, oleft : oleft + sw] = labels[top : top + sh, left : left + sw]
    return out


def fit_volume(labels: np.ndarray, size: int, fit: str) -> np.ndarray:
    """[D, H, W] -> [size, size, size] as `readers.resize_volume` moves its volume."""
    return _nearest(_square(labels, fit), (size, size, size))


def find_mask(image: Path, pattern: str) -> Path:
    """The mask `data.mask_pattern` names for `image` ({name}, {stem}, {suffix})."""
    name = image.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else image.suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    return (image.parent / pattern.format(name=name, stem=stem, suffix=suffix)).resolve()
