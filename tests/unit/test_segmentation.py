"""Segmentation's parts: masks read per format (PNG label maps, NIfTI label volumes with nibabel's own
scan, DICOM SEG with pydicom's own file) on their images' grid, bad masks named, Dice/IoU/HD95 as
MONAI computes them and pooled exactly, patches, sliding windows as MONAI's, masks written back with
their image's geometry, and what a segmentation job refuses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.core.imaging.masks import BadMask, _decode, image_grid, read_mask
from orchestrator.core.imaging.readers import Preprocess, read_image, read_volume
from orchestrator.spec.errors import DataError

NIFTIS = Path(__import__("nibabel").__file__).parent / "tests" / "data"
DICOMS = Path(__import__("pydicom").__file__).parent / "data" / "test_files"


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


# ----------------------------------------------------------------------------------------- reading masks
@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_a_png_label_map_lands_on_its_images_pixels_with_its_labels_unblended(tmp_path, fit):
    # Prepare: a 30 x 44 scan with a bright square, its mask labelling that square 2 (and a bar 7)
    image, mask = np.zeros((30, 44), np.uint8), np.zeros((30, 44), np.uint8)
    image[8:20, 14:30], mask[8:20, 14:30] = 255, 2
    mask[25:28, 2:40] = 7
    pre = Preprocess(16, 1, fit)
    # Execute
    pixels = read_image(_png(tmp_path / "scan.png", image), pre)[0]
    labels, _ = read_mask(_png(tmp_path / "mask.png", mask), pre, image_grid(tmp_path / "scan.png", 2))
    # Assert: nearest neighbours only (no value between labels), and the label lies where the image is bright
    assert labels.shape == (16, 16) and set(np.unique(labels)) <= {0, 2, 7}
    square = labels == 2
    assert square.any() and pixels[square].mean() > 0.7 and pixels[labels == 0].mean() < 0.1
    assert (labels[pixels >= 0.999] == 2).all()   # every pixel wholly inside the square is labelled it


def test_nibabels_own_scan_and_a_label_volume_made_by_a_rule_line_up_in_3d(tmp_path):
    """anatomical.nii is a real scan; its label volume marks the voxels above its 90th percentile.
    Stored in another orientation (LPS), the mask is reoriented as the scan is, so it still marks
    the scan's bright voxels once both are read whole."""
    import nibabel as nib

    scan = nib.load(NIFTIS / "anatomical.nii")
    data = np.asarray(scan.dataobj, dtype=np.float64)
    rule = (data > np.percentile(data, 90)).astype(np.uint8)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(rule[::-1, ::-1], scan.affine @ np.array(
        [[1, 0, 0, data.shape[0] - 1], [0, 1, 0, data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]) @ flip),
        tmp_path / "label.nii.gz")
    nib.save(nib.Nifti1Image(rule, scan.affine), tmp_path / "same.nii.gz")   # stored as the scan is
    pre = Preprocess(16, 1, "pad", dims=3)
    vol = read_volume(NIFTIS / "anatomical.nii", pre)[0]
    grid = image_grid(NIFTIS / "anatomical.nii", 3)
    labels, spacing = read_mask(tmp_path / "label.nii.gz", pre, grid)
    assert labels.shape == (16, 16, 16) and set(np.unique(labels)) == {0, 1}
    assert np.array_equal(labels, read_mask(tmp_path / "same.nii.gz", pre, grid)[0])   # orientation undone
    assert vol[labels == 1].mean() > vol[labels == 0].mean() + 0.1   # the brightest voxels, and not the pad
    assert spacing is not None and len(spacing) == 3


def test_pydicoms_own_dicom_seg_is_read_as_a_label_map():
    """liver_1frame.dcm: a real DICOM SEG (one binary frame, segment 1 'Liver', 512 x 512)."""
    import pydicom

    ds = pydicom.dcmread(DICOMS / "liver_1frame.dcm")
    raw, spacing = _decode(DICOMS / "liver_1frame.dcm", "dicom", 2)
    assert raw.shape == (512, 512) and set(np.unique(raw)) == {0, 1}
    assert int(raw.sum()) == int(ds.pixel_array.sum()) and spacing == pytest.approx((0.810547, 0.810547))
    labels, _ = read_mask(DICOMS / "liver_1frame.dcm", Preprocess(64, 1, "pad"), (512, 512))
    assert abs(labels.mean() - raw.mean()) < 0.01   # the liver keeps its share of the slice


def test_a_mask_on_another_grid_than_its_image_is_refused_naming_both_shapes():
    with pytest.raises(BadMask, match="mask of shape 512x512, but its image is 128x128"):
        read_mask(DICOMS / "liver_1frame.dcm", Preprocess(32), image_grid(DICOMS / "CT_small.dcm", 2))


@pytest.mark.parametrize("bad, why", [
    (np.stack([np.eye(8, dtype=np.uint8) * 255, np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)], -1),
     "a colour image"),
    (np.full((8, 8), 0.5, dtype=np.float32), "not whole numbers"),
])
def test_a_mask_that_is_not_a_label_map_says_why(tmp_path, bad, why):
    import nibabel as nib

    path = _png(tmp_path / "m.png", bad) if bad.ndim == 3 else tmp_path / "m.nii.gz"
    if bad.ndim == 2:
        nib.save(nib.Nifti1Image(bad, np.eye(4)), path)
    with pytest.raises(BadMask, match=why):
        read_mask(path, Preprocess(8))


def _hospital(root: Path, n: int = 6, value: int = 1, shape=(12, 12), mask_shape=None) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = (rng.random(shape) * 80).astype(np.uint8)
        mask = np.zeros(mask_shape or shape, np.uint8)
        mask[2:6, 3:8] = value
        image[2:6, 3:8] = 250
        _png(root / f"c{i}.png", image)
        _png(root / f"c{i}_mask.png", mask)
    return root


def _job(path: Path, **data):
    from orchestrator.spec.job import JobSpec

    return JobSpec.model_validate({"kind": "centralized", "data": {"source": "images", "path": str(path),
                                   "image_size": 8, "mask_pattern": "{stem}_mask.png", **data},
                                   "model": {"name": "unet", "channels": [8, 16]}})


def test_the_label_values_are_agreed_from_what_the_masks_hold_and_an_unknown_one_is_named(tmp_path):
    from orchestrator.core.imaging.masked import segmentation_tables

    _hospital(tmp_path / "h" / "a", value=255)
    tables, schema = segmentation_tables(_job(tmp_path / "h" / "a"))
    assert schema.segmentation and schema.values == (0, 255) and schema.classes == ("0", "255")
    assert tables[0].y.shape == (6, 64) and set(np.unique(tables[0].y)) == {0, 1}
    with pytest.raises(DataError) as err:   # data.classes names values 0 and 1: 255 is none of them
        segmentation_tables(_job(tmp_path / "h" / "a", classes=["background", "lesion"]))
    assert "c0_mask.png: labels [255] are not among the job's labels [0, 1]" in str(err.value)


def test_a_mask_of_another_shape_is_named_with_its_hospital(tmp_path):
    from orchestrator.core.imaging.masked import segmentation_tables

    _hospital(tmp_path / "h" / "b", mask_shape=(12, 10))
    with pytest.raises(DataError) as err:
        segmentation_tables(_job(tmp_path / "h" / "b"))
    text = str(err.value)
    assert "hospital b" in text and "c0_mask.png: mask of shape 12x10, but its image is 12x12" in text


def test_an_image_without_its_mask_is_named_with_where_the_pattern_looked(tmp_path):
    from orchestrator.core.imaging.masked import segmentation_tables

    (_hospital(tmp_path / "h" / "c") / "c3_mask.png").unlink()
    with pytest.raises(DataError, match=r"1 of 6 images have no mask .* c3.png -> c3_mask.png"):
        segmentation_tables(_job(tmp_path / "h" / "c"))


# ----------------------------------------------------------------------------------------- metrics
def _masks(seed: int, n: int = 10, k: int = 3, side: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros((n, side, side), np.int64)
    for i in range(n):
        for c in range(1, k):
            if rng.random() < 0.8:   # some cases lack a label: left out of its mean, as MONAI does
                r, q = rng.integers(0, side - 4, 2)
                y[i, r:r + 4, q:q + 4] = c
    pred = np.where(rng.random(y.shape) < 0.15, rng.integers(0, k, y.shape), y)
    return y, pred


def test_dice_and_iou_are_monais_and_pool_exactly_from_two_hospitals_sums():
    from monai.metrics import DiceMetric, MeanIoU

    from orchestrator.core import metrics as M

    y, pred = _masks(1)
    k = 3
    onehot = lambda a: torch.nn.functional.one_hot(torch.as_tensor(a), k).movedim(-1, 1).float()  # noqa: E731
    dice_metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    iou_metric = MeanIoU(include_background=False, reduction="mean_batch", ignore_empty=True)
    dice_metric(onehot(pred), onehot(y))
    iou_metric(onehot(pred), onehot(y))
    dice, iou = dice_metric.aggregate(), iou_metric.aggregate()
    whole = M.from_segmentation_sums(M.segmentation_sums(y.reshape(10, -1), pred.reshape(10, -1), k), ("bg", "a", "b"))
    assert whole["dice_a"] == pytest.approx(float(dice[0])) and whole["dice_b"] == pytest.approx(float(dice[1]))
    assert whole["iou_a"] == pytest.approx(float(iou[0])) and whole["dice"] == pytest.approx(float(dice.mean()))
    assert whole["pixel_accuracy"] == pytest.approx((y == pred).mean())
    halves = [M.segmentation_sums(y[s].reshape(5, -1), pred[s].reshape(5, -1), k) for s in (slice(0, 5), slice(5, 10))]
    assert M.from_sums(halves[0] + halves[1], "segmentation", ("bg", "a", "b")) == pytest.approx(whole)


def test_hd95_is_monais_in_millimetres_of_the_jobs_spacing():
    from monai.metrics import compute_hausdorff_distance

    from orchestrator.core.segmentation import hausdorff95

    y, pred = _masks(2, n=4)
    eye = torch.eye(3)
    ref = compute_hausdorff_distance(eye[torch.as_tensor(pred)].movedim(-1, 1), eye[torch.as_tensor(y)].movedim(-1, 1),
                                     include_background=False, percentile=95, spacing=[0.5, 0.5]).numpy()
    got = hausdorff95(pred, y, 3, (0.5, 0.5))
    finite = np.isfinite(got[:, 1:])
    assert finite.any() and np.allclose(got[:, 1:][finite], ref[finite])
    assert np.allclose(hausdorff95(pred, y, 3, (1.0, 1.0))[:, 1:][finite], 2 * got[:, 1:][finite])


# ----------------------------------------------------------------------------------------- network, patches, windows
def _model(patch: int | None, side: int = 32, dims: int = 2):
    from orchestrator.core.models import build_model
    from orchestrator.spec.model import ModelSpec

    spec = ModelSpec.model_validate({"name": "unet", "channels": [8, 16], "patch_size": patch, "spatial_dims": dims})
    return build_model(spec, side**dims, 3)


def test_patches_are_seeded_and_half_of_them_hold_a_labelled_pixel():
    from orchestrator.core.segmentation import Patches

    y = torch.zeros(64, 32, 32, dtype=torch.long)
    y[:, 2:4, 28:30] = 1   # a small structure in a corner: a patch drawn anywhere rarely holds it
    x = torch.rand(64, 32 * 32)
    a, b = Patches(16, 32, 1, 2, seed=3), Patches(16, 32, 1, 2, seed=3)
    xa, ya = a(x, y.reshape(64, -1))
    xb, yb = b(x, y.reshape(64, -1))
    assert xa.shape == (64, 1, 16, 16) and ya.shape == (64, 16, 16)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    holding = (ya.reshape(64, -1) > 0).any(1).float().mean()
    assert 0.3 < holding < 0.8   # about half by the rule, plus the few random ones that reach the corner
    always = Patches(16, 32, 1, 2, seed=3, positive=1.0)(x, y.reshape(64, -1))[1]
    assert bool((always.reshape(64, -1) > 0).any(1).all())
    # each patch is one window of its own image, its mask cut at the same place
    coded = torch.arange(32 * 32, dtype=torch.float32).repeat(64, 1)   # a pixel's value: where it lies
    xc, yc = Patches(16, 32, 1, 2, seed=5)(coded, y.reshape(64, -1))
    for i in range(64):
        r, c = divmod(int(xc[i, 0, 0, 0]), 32)
        assert torch.equal(xc[i, 0], coded[i].reshape(32, 32)[r:r + 16, c:c + 16])
        assert torch.equal(yc[i], y[i, r:r + 16, c:c + 16])
    small = Patches(16, 8, 1, 2, seed=0)(torch.rand(2, 64), torch.ones(2, 64, dtype=torch.long))
    assert small[0].shape == (2, 1, 16, 16) and int(small[1].sum()) == 2 * 64   # padded with background


def test_evaluation_slides_gaussian_windows_exactly_as_monai_does():
    from monai.inferers import sliding_window_inference

    from orchestrator.core.segmentation import OVERLAP, WINDOW_BATCH

    model = _model(16).eval()
    x = torch.rand(2, 32 * 32)
    with torch.no_grad():
        ours = model(x)
        theirs = sliding_window_inference(x.reshape(2, 1, 32, 32), (16, 16), WINDOW_BATCH, model.logits,
                                          overlap=OVERLAP, mode="gaussian")
    assert ours.shape == (2, 3, 32, 32) and torch.allclose(ours, theirs)
    with torch.no_grad():   # training mode: the patch itself, no windows
        assert model.train()(torch.rand(2, 1, 16, 16)).shape == (2, 3, 16, 16)


def test_a_3d_unet_segments_volumes_with_windows_too():
    model = _model(8, side=16, dims=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 16**3)).shape == (1, 3, 16, 16, 16)


# ----------------------------------------------------------------------------------------- writing masks back
@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_a_mask_read_and_put_back_is_the_files_mask(fit):
    from orchestrator.core.imaging.masks import fit_plane
    from orchestrator.core.imaging.writers import to_file_grid

    labels = np.zeros((30, 44), np.int32)
    labels[5:25, 10:30] = 1
    labels[12:18, 15:22] = 2
    side = 44 if fit == "pad" else 30
    pre = Preprocess(side, 1, fit)
    back = to_file_grid(fit_plane(labels, pre, None), (30, 44), pre)
    if fit == "crop":   # what the crop cut away is background when put back
        assert np.array_equal(back[:, 7:37], labels[:, 7:37]) and not back[:, :7].any()
    elif fit == "pad":
        assert np.array_equal(back, labels)
    else:
        assert (back == labels).mean() > 0.95


def test_a_nifti_mask_written_for_an_lps_volume_keeps_its_affine_and_reads_back_the_same(tmp_path):
    import nibabel as nib

    from orchestrator.core.imaging.writers import write_mask

    rng = np.random.default_rng(0)
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    lps[:3, 3] = (10, -4, 7)
    nib.save(nib.Nifti1Image(rng.integers(0, 99, (9, 7, 5)).astype(np.int16), lps), tmp_path / "scan.nii.gz")
    view = rng.integers(0, 3, (5, 7, 9))   # as the 3D reader shows a (9, 7, 5) LPS volume: (z, rows, columns)
    written = write_mask(view, tmp_path / "scan.nii.gz", tmp_path / "scan_pred.nii.gz", dims=3)
    again = nib.load(written)
    assert again.shape == (9, 7, 5) and np.allclose(again.affine, lps)
    assert np.array_equal(_decode(written, "nifti", 3)[0], view)


# ----------------------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("extra, says", [
    ({"train": {"augment": {"flip": True}}}, "train.augment: moves images but not their masks"),
    ({"train": {"loss": "cross_entropy"}}, "a segmentation trains dice_ce or dice_focal"),
    ({"train": {"class_weights": "balanced"}}, "train.class_weights"),
    ({"kind": "federated", "federated": {"num_clients": 3, "partition": {"name": "dirichlet"}}},
     "dirichlet deals images by their one label"),
    ({"kind": "federated", "federated": {"num_clients": 3, "engine": "vectorized"}}, "not model.head segmentation"),
    ({"model": {"name": "cnn"}}, "masks are what a segmentation learns"),
    ({"model": {"name": "unet", "head": "softmax"}}, "head: segmentation is the head of the segmentation networks"),
    ({"model": {"name": "cnn", "patch_size": 16}}, "patch_size: patches and sliding windows"),
])
def test_what_a_segmentation_job_refuses_is_named(extra, says):
    from pydantic import ValidationError

    from orchestrator.spec.job import JobSpec

    job = {"kind": "centralized", "data": {"source": "images", "path": ".", "mask_pattern": "{stem}_mask.png"},
           "model": {"name": "unet"}}
    for key, value in extra.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(job)
    assert says in str(err.value)


def test_a_segmentation_network_defaults_to_its_head_and_group_norm():
    from orchestrator.spec.model import ModelSpec

    spec = ModelSpec.model_validate({"name": "segresnet"})
    assert spec.head == "segmentation" and spec.norm == "group"


def test_the_gpu_3d_unet_benchmark_runs_on_the_cpu_at_tiny_sizes():
    """bench/gpu/images.py --model unet --dims 3 (64^3 on the device machine), kept from rotting here."""
    import sys

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from images import measure

    for ours in (True, False):
        got = measure("unet", 16, 2, 1, False, ours, torch.device("cpu"), dims=3)
        assert got["images_per_s"] > 0 and got["peak_gpu_mib"] is None


def test_a_deployments_census_agrees_the_mask_labels_the_inline_plan_agrees(tmp_path, monkeypatch):
    """Each SuperNode describes its own folder (label values and pixel counts, never a mask); the
    coordinator's schema from those answers is the one the inline engine reads from the folders."""
    from orchestrator.core.imaging.masked import describe_masked
    from orchestrator.jobs.plan import plan_data, plan_from_census
    from orchestrator.spec.loading import load_job
    from tests.conftest import CONFIGS

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    data = CONFIGS / "data" / "segmentation_hospitals"
    job = load_job(CONFIGS / "images_segmentation.yaml", [f"data.path={data}", "data.classes=null"])
    described = {i: describe_masked(job, data / name, i) for i, name in enumerate(("hospital_a", "hospital_b"))}
    assert described[0]["labels"] == [0, 1, 2] and "label_pixels" in described[0]
    census = plan_from_census(job, described).schema
    inline = plan_data(job).schema
    assert census.segmentation and census.values == inline.values == (0, 1, 2)
    assert census.classes == inline.classes == ("0", "1", "2") and census.features == inline.features


def test_a_2d_models_mask_of_a_volumes_middle_slice_is_written_at_that_slice(tmp_path):
    """A 2D network reads a 3D NIfTI's middle axial slice: its mask is written as that one slice,
    the affine moved to it, so a viewer overlays it where the slice lies; read back, it is the mask."""
    import nibabel as nib

    from orchestrator.core.imaging.writers import write_mask

    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 7), np.int16), affine), tmp_path / "vol.nii.gz")
    labels = np.random.default_rng(0).integers(0, 3, (5, 6))   # the 2D reader's (rows, columns) of (6, 5, 7)
    written = nib.load(write_mask(labels, tmp_path / "vol.nii.gz", tmp_path / "vol_pred.nii.gz", dims=2))
    assert written.shape == (6, 5, 1)
    assert np.allclose(written.affine[:3, 3], (affine @ [0, 0, 3, 1])[:3])   # slice 3 of 7, 9 mm up
    assert np.array_equal(_decode(tmp_path / "vol_pred.nii.gz", "nifti", 2)[0], labels)
