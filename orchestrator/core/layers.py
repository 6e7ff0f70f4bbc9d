"""The parts every model is made of: the input scaling, the `Net` of named parts, normalisation
layers, image shapes and freezing. Shared by the model registry (`models`) and the segmentation
networks (`segmentation`), which the registry builds."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.spec.model import ModelSpec

# batch norm's public classes (their common base, torch's `_BatchNorm`, is private)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class Standardize(nn.Module):
    """(x - mean) / scale with fixed buffers, so the logged model takes raw feature values."""

    mean: torch.Tensor    # buffers, declared for the type checker
    scale: torch.Tensor

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def set(self, mean: np.ndarray, scale: np.ndarray) -> None:
        scale = np.where(np.asarray(scale) > 1e-8, scale, 1.0)  # constant columns pass through
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))


class Destandardize(nn.Module):
    """A regression head's output in target units: z * scale + mean (the training targets' moments)."""

    mean: torch.Tensor    # buffers, declared for the type checker
    scale: torch.Tensor

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.mean

    def set(self, mean: float, scale: float) -> None:
        self.mean.fill_(float(mean))
        self.scale.fill_(float(scale) if scale > 1e-8 else 1.0)


class Net(nn.Module):
    def __init__(self, input: nn.Module, body: nn.Module, head: nn.Module, output: nn.Module | None = None):
        super().__init__()
        self.input, self.body, self.head = input, body, head
        self.output = output if output is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.head(self.body(self.input(x))))


def norm_layer(kind: str, channels: int, groups: int, dims: int = 2) -> nn.Module | None:
    """model.norm as a layer: batch norm, GroupNorm (groups dividing the channels: fewer where they
    do not), or none. `dims`: 1 (features), 2 (images), 3 (volumes)."""
    if kind == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)
    if kind == "group":
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return nn.GroupNorm(g, channels)
    return None


def to_group_norm(module: nn.Module, groups: int) -> None:
    """Every batch norm inside `module` replaced by GroupNorm over as many channels."""
    for name, child in module.named_children():
        if isinstance(child, BATCH_NORMS):
            setattr(module, name, norm_layer("group", child.num_features, groups))
        else:
            to_group_norm(child, groups)


def image_side(num_features: int, dims: int = 2) -> int | None:
    shape = image_shape(num_features, dims)
    return shape[1] if shape else None


def image_shape(num_features: int, dims: int = 2) -> tuple[int, int] | None:
    """(channels, side) of flat square images: side x side grey, or 3 x side x side RGB (3 s^2 is
    never a square, so the two never mix up); `dims` 3: cubic volumes, side^3 or 3 x side^3."""
    for channels in (1, 3):
        if num_features % channels:
            continue
        side = int(round((num_features // channels) ** (1.0 / dims)))
        if side**dims * channels == num_features:
            return channels, side
    return None


def norm_kind(spec: ModelSpec) -> str:
    return spec.norm or ("batch" if spec.batchnorm else "none")


def parameter_groups(model: nn.Module) -> list[str]:
    """The names `model.freeze` accepts: every named layer (input, body, body.features.0, head ...)."""
    return sorted(name for name, _ in model.named_modules() if name)


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    if not prefixes:
        return
    known = parameter_groups(model)
    unknown = [p for p in prefixes if p not in known]
    if unknown:
        raise ValueError(f"model.freeze: {unknown} name no layer of this model; layers: {', '.join(known[:30])}")
    for name, p in model.named_parameters():
        if any(name == f or name.startswith(f + ".") for f in prefixes):
            p.requires_grad_(False)
