"""Starting a job's model: fresh, or from a logged model (transfer learning, `model.init_from`).

The source weights are loaded once, by the driver, before any run is created (a wrong URI is a
user error with nothing recorded); hospitals and Ray workers receive the resulting weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from orchestrator.spec.job import JobSpec
from orchestrator.spec.model import MONAI_MODELS, WEIGHT_FILES
from orchestrator.spec.errors import UserError
from orchestrator.core.models import Net, build_model, image_channels, prepare, transfer


@dataclass
class Start:
    """What a model starts from: source weights (or none) and the lineage to tag the run with."""

    weights: dict[str, torch.Tensor] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def resolve(job: JobSpec, tracking_uri: str) -> Start:
    if not job.model.init_from:
        return Start()
    if job.model.init_from.endswith(WEIGHT_FILES):
        weights, tags = weights_file(job.model.init_from)
        if not any(k.startswith(("input.", "body.", "head.", "output.")) for k in weights):
            # a bare network's own state dict (a MONAI ResNet's `conv1.weight`): this model's body
            prefix = "body.net." if job.model.name in MONAI_MODELS else "body."
            weights = {prefix + k: v for k, v in weights.items()}
        return Start(weights, tags)
    from orchestrator.tracking.runs import load_source_weights

    weights, tags = load_source_weights(tracking_uri, job.model.init_from)
    return Start(weights, tags)


def weights_file(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A local weights file (pretrained elsewhere, no hub): safetensors, or a torch state dict
    (.pt/.pth, loaded with weights_only: no code runs); its lineage names the file and its hash."""
    import hashlib
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError("model.init_from", [f"{path}: no such weights file"])
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(file))
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError("expected a state dict: names to tensors")
            weights = state
    except Exception as exc:  # noqa: BLE001 - any reader's failure is the file's problem
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError("model.init_from", [f"{path}: cannot read as weights ({first})"]) from None
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return dict(weights), {"lineage.init_from": str(file.resolve()), "lineage.source_sha256": digest}


def initial_model(job: JobSpec, num_features: int, num_classes: int, start: Start | None,
                  X_train: np.ndarray | None = None, y_train: np.ndarray | None = None) -> tuple[Net, dict]:
    """The seeded model with source weights copied in where names and shapes match.

    Input/output scaling comes from the source when it was copied (the layers learnt on that
    scale), else from `X_train`/`y_train` when given. Returns (model, notes for the run).
    """
    torch.manual_seed(job.seed)
    model = build_model(job.model, num_features, num_classes)
    notes: dict = {}
    copied: list[str] = []
    if start is not None and start.weights is not None:
        copied, fresh = transfer(model, start.weights)
        if not [k for k in copied if not k.startswith(("input.", "output."))]:
            raise UserError("model.init_from", [f"{job.model.init_from}: no layer matches this model by name and "
                                                f"shape (its layers: {', '.join(sorted(start.weights)[:12])})"])
        notes = {"transfer.copied": len(copied), "transfer.fresh": ",".join(fresh) or "none"}
    if X_train is not None:
        scaled_by_source = "input.mean" in copied
        keep_output = "output.mean" in copied
        if not (scaled_by_source and keep_output):
            prepare(model, X_train, y_train if y_train is not None else np.zeros(0),
                    job.data.standardize and not scaled_by_source, image_channels(job))
            if keep_output and start is not None:  # restore what prepare overwrote
                transfer(model, {k: start.weights[k] for k in ("output.mean", "output.scale")})
    return model, notes
