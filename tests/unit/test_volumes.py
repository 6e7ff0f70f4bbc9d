"""3D scans read whole for 3D networks (model.spatial_dims 3): nibabel's and pydicom's own volumes,
two orientations lining up, the 2D reader's slice inside the 3D reader's volume, the networks, and
what a volume job refuses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.core.imaging.readers import Preprocess, UnreadableImage, read_image, read_volume
from tests.conftest import CONFIGS

NIFTIS = Path(__import__("nibabel").__file__).parent / "tests" / "data"
DICOMS = Path(__import__("pydicom").__file__).parent / "data" / "test_files"


def test_nibabels_own_volumes_are_read_whole():
    for name in ("anatomical.nii", "example4d.nii.gz"):   # a 3D anatomical scan; a 4D series' first volume
        vol = read_volume(NIFTIS / name, Preprocess(16, 1, dims=3))
        assert vol.shape == (1, 16, 16, 16) and vol.dtype == np.float32
        assert 0 <= vol.min() and vol.max() <= 1 and vol.std() > 0.05
        # not one slice repeated: the scan changes along its axial axis
        assert np.abs(np.diff(vol[0], axis=0)).mean() > 0.005
    rgb = read_volume(NIFTIS / "anatomical.nii", Preprocess(8, 3, dims=3))
    assert rgb.shape == (3, 8, 8, 8) and np.array_equal(rgb[0], rgb[2])


def test_the_2d_readers_slice_is_the_3d_readers_middle_slice(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    ras = rng.integers(0, 1000, size=(20, 20, 9)).astype(np.int16)
    nib.save(nib.Nifti1Image(ras, np.eye(4)), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(ras[::-1, ::-1], np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "lps.nii.gz")
    vol = read_volume(tmp_path / "ras.nii.gz", Preprocess(20, 1, "stretch", window=(500, 1000), dims=3))
    # resized from 9 slices to 20 along depth: compare against the unresized volume instead
    from orchestrator.core.imaging.readers import _nifti_volume

    raw = _nifti_volume(tmp_path / "ras.nii.gz", (500, 1000))
    plane = read_image(tmp_path / "ras.nii.gz", Preprocess(20, 1, "stretch", window=(500, 1000)))[0]
    assert raw.shape == (9, 20, 20) and np.abs(raw[4] - plane).max() < 1e-6
    assert vol.shape == (1, 20, 20, 20)
    # a scanner storing LPS lines up with one storing RAS
    assert np.abs(_nifti_volume(tmp_path / "lps.nii.gz", (500, 1000)) - raw).max() < 1e-6


def test_a_multi_frame_dicom_is_a_volume_and_a_single_frame_or_picture_is_refused(tmp_path):
    vol = read_volume(DICOMS / "rtdose.dcm", Preprocess(12, 1, dims=3))   # an RT dose grid: 15 frames
    assert vol.shape == (1, 12, 12, 12) and vol.std() > 0.01
    with pytest.raises(UnreadableImage, match="single-frame DICOM"):
        read_volume(DICOMS / "CT_small.dcm", Preprocess(12, 1, dims=3))
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(UnreadableImage, match="2D picture"):
        read_volume(tmp_path / "x.png", Preprocess(12, 1, dims=3))


def test_the_shipped_volumes_read_the_same_from_nifti_and_dicom(monkeypatch, tmp_path):
    """The script writes each hospital's volumes in its own format; the DICOM's rescale and window
    and the NIfTI's LPS storage must both come back as the volume that was drawn."""
    import sys

    sys.path.insert(0, str(CONFIGS.parent / "scripts"))
    import make_volume_hospitals as script

    X, _ = script.digits()
    drawn = script.volume(X[3], 3.0)
    monkeypatch.chdir(tmp_path)
    script.write_nifti_folders(tmp_path / "a", [drawn], np.array([1]))
    script.write_dicom_manifest(tmp_path / "b", [drawn], np.array([1]))
    pre = Preprocess(28, 1, window=(300, 1000), dims=3)
    from orchestrator.core.imaging.readers import _dicom_volume, _nifti_volume

    hu = drawn * 1000.0 - 200.0
    expected = np.clip((hu + 200.0) / 1000.0, 0, 1)
    assert np.abs(_dicom_volume(next((tmp_path / "b" / "dicom").iterdir()), pre.window) - expected).max() < 2e-3
    nifti = _nifti_volume(next((tmp_path / "a" / "digit_1").iterdir()), None)
    assert np.abs(nifti - drawn / drawn.max()).max() < 2e-3


@pytest.mark.parametrize("name", ["cnn", "resnet18", "densenet121", "efficientnet_b0"])
def test_every_image_network_has_a_3d_form(name):
    from orchestrator.core.models import build_model
    from orchestrator.spec.model import ModelSpec

    side = 16 if name in ("cnn", "resnet18") else 32
    spec = ModelSpec.model_validate({"name": name, "spatial_dims": 3, "norm": "group" if name != "cnn" else None})
    model = build_model(spec, side**3, 4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, side**3)).shape == (2, 4)
    if name in ("cnn", "resnet18"):   # and it trains: every weight gets a gradient, a small step lowers the loss
        from orchestrator.core.training import Objective

        torch.manual_seed(0)
        X, y = torch.rand(4, side**3), torch.tensor([0, 1, 2, 3])
        obj = Objective("softmax", "cross_entropy", 4)
        loss = obj(model(X), y)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
        with torch.no_grad():
            for p in model.parameters():
                p -= 1e-3 * p.grad
            assert float(obj(model(X), y)) < float(loss)


def test_a_volume_jobs_tables_and_its_census_agree(monkeypatch, tmp_path):
    from orchestrator.core.imaging.tables import image_tables
    from orchestrator.spec.loading import load_job

    monkeypatch.setenv("CONSORTIUM_HOME", str(tmp_path))
    job = load_job(CONFIGS / "images_volumes_3d.yaml", [f"data.path={CONFIGS / 'data' / 'volume_hospitals'}"])
    tables, schema = image_tables(job)
    assert len(schema.features) == 16**3 and schema.features[0] == "voxel_0_0_0"
    assert [len(t.y) for t in tables] == [120, 120] and tables[1].groups is not None
    assert schema.classes == ("digit_0", "digit_1", "digit_2", "digit_3")


@pytest.mark.parametrize("extra, says", [
    (["data.spacing=[0.5,0.5]"], "data.spacing"),
    (["train.augment.flip=true"], "train.augment: flips, rotations and shifts of 2D images"),
    (["federated.engine=vectorized"], "batches 2D networks, not 3D ones"),
])
def test_what_a_volume_job_cannot_combine_with_is_named(extra, says):
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    with pytest.raises(ConfigError) as info:
        load_job(CONFIGS / "images_volumes_3d.yaml", extra)
    assert any(says in p for p in info.value.problems), info.value.problems


def test_a_table_or_a_feedforward_net_is_not_a_volume():
    from orchestrator.spec.errors import ConfigError
    from orchestrator.spec.loading import load_job

    with pytest.raises(ConfigError) as info:
        load_job(CONFIGS / "hospitals_fedavg.yaml", ["model.name=cnn", "model.spatial_dims=3"])
    assert any("model.spatial_dims: 3 reads volumes" in p for p in info.value.problems)
    with pytest.raises(ConfigError) as info:
        load_job(CONFIGS / "images_volumes_3d.yaml", ["model.name=mlp"])
    assert any("spatial_dims: 3 is for the image networks" in p for p in info.value.problems)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_opacus_gives_every_image_network_its_per_example_gradients(name):
    """Local DP-SGD clips each example's gradient: with GroupNorm, Opacus' per-example gradients of
    MONAI's networks (ResNet's blocks made to add their shortcut out of place) are each example's own."""
    import warnings

    from opacus import GradSampleModule

    from orchestrator.core.models import build_model
    from orchestrator.spec.model import ModelSpec

    torch.manual_seed(0)
    side = 16 if name == "resnet18" else 32
    model = build_model(ModelSpec.model_validate({"name": name, "norm": "group"}), side * side, 3)
    X, y = torch.rand(3, side * side), torch.tensor([0, 1, 2])
    params = [p for p in model.parameters() if p.requires_grad]
    own = [torch.autograd.grad(torch.nn.functional.cross_entropy(model(X[i:i + 1]), y[i:i + 1]), params)
           for i in range(3)]   # example i alone, before Opacus' hooks are on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = GradSampleModule(model, loss_reduction="sum")
        torch.nn.functional.cross_entropy(sampled(X), y, reduction="sum").backward()
    assert all(getattr(p, "grad_sample", None) is not None and p.grad_sample.shape == (3, *p.shape) for p in params)
    if name == "efficientnet_b0":
        return   # its stochastic depth draws other paths in the two passes; its per-example shapes suffice
    for i in range(3):
        worst = max(float((p.grad_sample[i] - g).abs().max() / (g.abs().max() + 1e-8)) for p, g in zip(params, own[i]))
        assert worst < 1e-3, (i, worst)


def test_a_resnet_with_out_of_place_blocks_loads_back_in_a_fresh_process(tmp_path):
    import pickle
    import subprocess
    import sys

    from orchestrator.core.models import build_model
    from orchestrator.spec.model import ModelSpec

    model = build_model(ModelSpec.model_validate({"name": "resnet50", "norm": "group"}), 32 * 32, 2).eval()
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    X = torch.rand(2, 32 * 32)
    torch.save(X, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(X), tmp_path / "want.pt")
    code = ("import pickle, torch; m = pickle.load(open('m.pkl', 'rb')).eval(); "
            "print(torch.allclose(m(torch.load('x.pt')), torch.load('want.pt')), type(m.body.net.layer1[0]).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "OutOfPlaceResNetBottleneck"], out.stderr[-2000:]
