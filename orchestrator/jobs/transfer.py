"""Starting a job's model: fresh, or from a logged model (transfer learning, `model.init_from`).

The source weights are loaded once, by the driver, before any run is created (a wrong URI is a
user error with nothing recorded); hospitals and Ray workers receive the resulting weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from orchestrator.spec.job import JobSpec
from orchestrator.spec.errors import UserError
from orchestrator.core.models import Net, build_model, prepare, transfer


@dataclass
class Start:
    """What a model starts from: source weights (or none) and the lineage to tag the run with."""

    weights: dict[str, torch.Tensor] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def resolve(job: JobSpec, tracking_uri: str) -> Start:
    if not job.model.init_from:
        return Start()
    from orchestrator.tracking.runs import load_source_weights

    weights, tags = load_source_weights(tracking_uri, job.model.init_from)
    return Start(weights, tags)


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
                    job.data.standardize and not scaled_by_source)
            if keep_output and start is not None:  # restore what prepare overwrote
                transfer(model, {k: start.weights[k] for k in ("output.mean", "output.scale")})
    return model, notes
