"""`model.init_from` a local weights file (no hub): a network pretrained elsewhere, saved as
safetensors or a torch state dict, copied into the job's model by names and shapes."""
from __future__ import annotations

import pytest
import torch

from orchestrator.jobs.transfer import initial_model, resolve
from orchestrator.spec.errors import UserError
from orchestrator.spec.job import JobSpec


def _job(init_from: str, name: str = "resnet18") -> JobSpec:
    return JobSpec.model_validate({"name": "t", "kind": "centralized", "data": {"source": "digits"},
                                   "model": {"name": name, "init_from": init_from, "freeze": ["input", "body"]}})


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_bare_networks_weights_file_starts_the_models_body(tmp_path, suffix):
    from monai.networks.nets import resnet18
    from safetensors.torch import save_file

    torch.manual_seed(1)
    # digits are 8x8 grey: the body MONAI builds for small images (3x3 stem, no max pool)
    net = resnet18(spatial_dims=2, n_input_channels=1, num_classes=1, feed_forward=False, conv1_t_size=3,
                   conv1_t_stride=1, no_max_pool=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / f"pretrained{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    job = _job(str(path))
    start = resolve(job, "unused")
    model, notes = initial_model(job, 64, 10, start)
    assert torch.equal(model.state_dict()["body.net.conv1.weight"], state["conv1.weight"])
    assert notes["transfer.copied"] == len(state)
    assert start.tags["lineage.init_from"] == str(path.resolve()) and len(start.tags["lineage.source_sha256"]) == 16
    fresh = initial_model(_job(str(path)), 64, 10, None)[0]
    assert not torch.equal(fresh.state_dict()["body.net.conv1.weight"], state["conv1.weight"])


def test_a_missing_or_foreign_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such weights file"):
        resolve(_job(str(tmp_path / "absent.safetensors")), "unused")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read as weights"):
        resolve(_job(str(tmp_path / "junk.pt")), "unused")
    torch.save({"w": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no layer matches this model"):
        initial_model(_job(str(tmp_path / "other.pt")), 64, 10, resolve(_job(str(tmp_path / "other.pt")), "unused"))
