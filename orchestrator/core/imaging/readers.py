"""One image file as the model sees it: a float32 array [channels, size, size] in [0, 1] (or, for a 3D
network, a volume [channels, size, size, size]: `read_volume`).

PNG, JPEG, TIFF and BMP through Pillow; DICOM through pydicom (the modality LUT, i.e. rescale slope
and intercept, then the window from YAML or the file, MONOCHROME1 inverted, a multi-frame file's
middle frame); NIfTI through nibabel (reoriented to the closest canonical, RAS+, orientation so two
scanners' volumes line up; a volume's middle axial slice). Then grey or RGB as `data.channels`
asks, fitted to a square (`data.fit`) and resized to `data.image_size`.

A file that cannot be read raises UnreadableImage with the reason, which the caller names with the
file and its hospital.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz")


class UnreadableImage(Exception):
    """A file that is not an image this reader can decode; the message says why."""


@dataclass(frozen=True)
class Preprocess:
    """What every hospital does the same way to each image (agreed in the job, never pixels)."""

    size: int = 32
    channels: int = 1                      # 1: grey, 3: RGB
    fit: str = "pad"                       # pad | crop | stretch: how a non-square image becomes square
    window: tuple[float, float] | None = None   # DICOM / NIfTI: (centre, width) in the file's units
    spacing: tuple[float, float] | None = None  # mm per pixel (rows, columns): resampled, field of view kept
    dims: int = 2                          # 3: a volume [channels, size, size, size] (model.spatial_dims)

    @classmethod
    def of(cls, spec, dims: int = 2) -> Preprocess:
        return cls(spec.image_size, spec.channels, spec.fit, tuple(spec.window) if spec.window else None,
                   tuple(spec.spacing) if spec.spacing else None, int(dims))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, *(self.size,) * self.dims)


def is_image(path: Path) -> bool:
    """An image by its name, or a DICOM file without a suffix (archives often export them so)."""
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return True
    if path.suffix == "" and path.is_file():
        try:
            with open(path, "rb") as f:
                f.seek(128)
                return f.read(4) == b"DICM"
        except OSError:
            return False
    return False


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".dcm", ".dicom")) or path.suffix == "":
        return "dicom"
    return "picture"


def read_image(path: Path, pre: Preprocess) -> np.ndarray:
    """The file as [channels, size, size] float32 in [0, 1] (pre.dims 3: `read_volume`)."""
    if pre.dims == 3:
        return read_volume(path, pre)
    kind = kind_of(path)

    def decode() -> tuple[np.ndarray, tuple[float, float] | None]:
        if kind == "dicom":
            return _dicom(path, pre.window)
        if kind == "nifti":
            return _nifti(path, pre.window)
        return _picture(path), None

    plane, spacing = _decoded(kind, decode)
    image = to_channels(plane, pre.channels)
    if pre.spacing is None:
        return resize(image, pre.size, pre.fit)
    if spacing is not None:   # to the asked mm per pixel, then the centre size x size (a fixed field of view)
        rows = max(1, int(round(image.shape[1] * spacing[0] / pre.spacing[0])))
        cols = max(1, int(round(image.shape[2] * spacing[1] / pre.spacing[1])))
        image = _resample(image, rows, cols)
    return _pad_crop(image, pre.size)


def _decoded(kind: str, decode: Callable[[], T]) -> T:
    """`decode()`, any decoder's own error turned into UnreadableImage naming the format and why."""
    try:
        return decode()
    except (UnreadableImage, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder has its own errors: name the file, say why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableImage(f"cannot read as {kind}: {first[:200]}") from None


def read_volume(path: Path, pre: Preprocess) -> np.ndarray:
    """A NIfTI volume (reoriented to RAS+) or a multi-frame DICOM, whole: [channels, size, size, size]
    float32 in [0, 1], axial slices along the first axis (inferior to superior), each slice's rows
    and columns as the 2D reader shows them; windowed over the whole volume."""
    kind = kind_of(path)

    def decode() -> np.ndarray:
        if kind == "nifti":
            return _nifti_volume(path, pre.window)
        if kind == "dicom":
            return _dicom_volume(path, pre.window)
        raise UnreadableImage("a 2D picture: model.spatial_dims 3 reads volumes (NIfTI, multi-frame DICOM)")

    volume = _decoded(kind, decode)
    channels = np.repeat(volume[None], 3, axis=0) if pre.channels == 3 else volume[None]
    return resize_volume(channels, pre.size, pre.fit)


def _nifti_volume(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float64)
    while data.ndim > 3:                                # 4D (time, echoes): the first volume
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise UnreadableImage(f"a NIfTI image of shape {img.shape}: a 3D network needs a volume (x, y, z), "
                              "not a 2D slice")
    # RAS+ (x, y, z) -> (z, rows, columns): each axial slice as `_nifti` shows a 2D one
    return _windowed(np.flip(data.transpose(2, 1, 0), axis=1), window)


def _dicom_volume(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise UnreadableImage(f"not a DICOM file ({str(exc).strip()[:120]})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 2:
        raise UnreadableImage("a single-frame DICOM: a 3D network reads volumes (a multi-frame DICOM, or NIfTI)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnreadableImage("a colour multi-frame DICOM: a volume is read as grey values")
    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    volume = _windowed(values, window if window is not None else _file_window(ds))
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        volume = 1.0 - volume
    return volume


def resize_volume(volume: np.ndarray, size: int, fit: str) -> np.ndarray:
    """[C, D, H, W] -> [C, size, size, size]: each slice squared as `data.fit` says (pad, crop or
    stretch), then resampled along every axis (area averaging where every axis shrinks, else
    trilinear)."""
    import torch
    import torch.nn.functional as F

    c, d, h, w = volume.shape
    if fit == "crop" and h != w:
        s = min(h, w)
        volume = volume[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    elif fit == "pad" and h != w:
        s = max(h, w)
        square = np.zeros((c, d, s, s), dtype=np.float32)
        square[:, :, (s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = volume
        volume = square
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    if tuple(t.shape[-3:]) == (size, size, size):
        return t[0].numpy()
    shrinking = all(n > size for n in t.shape[-3:])
    out = F.interpolate(t, size=(size, size, size), mode="area") if shrinking else \
        F.interpolate(t, size=(size, size, size), mode="trilinear", align_corners=False)
    return out[0].clamp_(0.0, 1.0).numpy()


# --------------------------------------------------------------------------- decoders
def _picture(path: Path) -> np.ndarray:
    """[H, W] or [H, W, 3] in [0, 1]; 16-bit greys by their bit depth."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
            return (a / top).astype(np.float32)
        if im.mode == "F":
            return _min_max(np.asarray(im, dtype=np.float32))
        plain = im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L")
        return np.asarray(plain, dtype=np.float32) / 255.0


def _dicom(path: Path, window: tuple[float, float] | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise UnreadableImage(f"not a DICOM file ({str(exc).strip()[:120]})") from None
    if "PixelData" not in ds:
        raise UnreadableImage(f"a DICOM file without pixel data (modality {ds.get('Modality', '?')}, "
                              f"SOP class {getattr(ds.get('SOPClassUID'), 'name', '?')})")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom names the missing decoder
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        first = str(exc).strip().splitlines()[0][:160]
        raise UnreadableImage(f"its pixel data is compressed as '{name}', which no installed decoder "
                              f"handles ({first}): export it uncompressed or as JPEG baseline / JPEG 2000") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spacing = _pair(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = int(ds.get("SamplesPerPixel", 1) or 1) == 3
    if frames > 1:   # a multi-frame file is a volume: its middle frame is the 2D image
        pixels = pixels[frames // 2]
    if colour:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return np.asarray(pixels, dtype=np.float32) / float(2 ** int(ds.get("BitsStored", 8)) - 1), spacing
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(pixels, ds).astype(np.float32)
        return rgb / max(float(rgb.max()), 1.0), spacing
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)   # rescale slope and intercept
    if window is None:
        window = _file_window(ds)
    plane = _windowed(values, window)
    if photometric == "MONOCHROME1":   # high values are dark: invert so bone is bright in every file
        plane = 1.0 - plane
    return plane, spacing


def _pair(value) -> tuple[float, float] | None:
    try:
        return (float(value[0]), float(value[1])) if value is not None and len(value) >= 2 else None
    except (TypeError, ValueError):
        return None


def _file_window(ds) -> tuple[float, float] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    from pydicom.multival import MultiValue

    def first(v) -> float:   # several windows in one file: the first is the one a viewer opens with
        return float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v)

    try:
        return first(centre), first(width)
    except (TypeError, ValueError, IndexError):
        return None


def _nifti(path: Path, window: tuple[float, float] | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float64)   # scl_slope / scl_inter applied by nibabel
    while data.ndim > 3:                                # 4D (time, echoes): the first volume
        data = data[..., 0]
    if data.ndim == 3:
        data = data[:, :, data.shape[2] // 2]           # the middle axial slice (RAS+: z is last)
    if data.ndim != 2:
        raise UnreadableImage(f"a NIfTI image of shape {img.shape}: expected a 2D slice or a 3D volume")
    plane = np.flipud(data.T)                            # rows run anterior to posterior, as viewers show it
    zooms = img.header.get_zooms()
    spacing = (float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else None   # rows are y, columns x
    return _windowed(plane, window), spacing


def _windowed(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    if window is None:
        return _min_max(values)
    centre, width = window
    lo, hi = centre - width / 2.0, centre + width / 2.0
    return np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)


def _min_max(values: np.ndarray) -> np.ndarray:
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        return np.zeros_like(finite, dtype=np.float32)
    return ((finite - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- shape
def to_channels(plane: np.ndarray, channels: int) -> np.ndarray:
    """[H, W] or [H, W, 3] -> [channels, H, W]: RGB to grey by luminance (ITU-R 601), grey repeated."""
    if plane.ndim == 3 and plane.shape[2] == 4:
        plane = plane[..., :3]
    if plane.ndim == 2:
        out = plane[None]
        return np.repeat(out, 3, axis=0) if channels == 3 else out
    if plane.ndim != 3 or plane.shape[2] != 3:
        raise UnreadableImage(f"pixel array of shape {plane.shape}: expected grey or RGB")
    rgb = np.moveaxis(plane, 2, 0)
    if channels == 3:
        return rgb
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None].astype(np.float32)


def _resample(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if (rows, cols) == tuple(t.shape[-2:]):
        return image
    out = F.interpolate(t, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0).numpy()


def _pad_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size of an image, padded with black where it is smaller."""
    c, h, w = image.shape
    out = np.zeros((c, size, size), dtype=np.float32)
    sh, sw = min(h, size), min(w, size)
    top, left = (h - sh) // 2, (w - sw) // 2
    otop, oleft = (size - sh) // 2, (size - sw) // 2
    out[:, otop : otop + sh, oleft : oleft + sw] = image[:, top : top + sh, left : left + sw]
    return out


def resize(image: np.ndarray, size: int, fit: str) -> np.ndarray:
    """[C, H, W] -> [C, size, size]: padded with zeros to a square (pad), its centre square (crop)
    or stretched; then resampled (area averaging down, bilinear up)."""
    import torch
    import torch.nn.functional as F

    c, h, w = image.shape
    if fit == "crop" and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[:, top : top + s, left : left + s]
    elif fit == "pad" and h != w:
        s = max(h, w)
        square = np.zeros((c, s, s), dtype=np.float32)
        top, left = (s - h) // 2, (s - w) // 2
        square[:, top : top + h, left : left + w] = image
        image = square
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if t.shape[-1] == size and t.shape[-2] == size:
        return t[0].numpy()
    shrinking = t.shape[-1] > size and t.shape[-2] > size
    out = F.interpolate(t, size=(size, size), mode="area") if shrinking else \
        F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0].clamp_(0.0, 1.0).numpy()
