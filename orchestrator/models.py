"""Model registry: YAML `model:` -> torch.nn.Module. Plain torch, used by every runner."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.config import ModelSpec

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class Standardize(nn.Module):
    """(x - mean) / scale with fixed buffers, so the logged model takes raw feature values."""

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


class SmallCNN(nn.Module):
    """Conv(3x3)+ReLU+pool per entry of `channels`, then a linear head. Input: flat square images."""

    def __init__(self, side: int, channels: list[int], num_classes: int, activation: str, dropout: float):
        super().__init__()
        self.side = side
        layers: list[nn.Module] = []
        c_in, s = 1, side
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), ACTIVATIONS[activation]()]
            if s >= 4:
                layers.append(nn.MaxPool2d(2))
                s //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * s * s, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, self.side, self.side)))


def image_side(num_features: int) -> int | None:
    side = int(round(num_features**0.5))
    return side if side * side == num_features else None


def build_model(spec: ModelSpec, num_features: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [Standardize(num_features)]
    width = num_features
    if spec.name == "cnn":
        side = image_side(num_features)
        if side is None:
            raise ValueError(f"model.name: cnn needs a square number of pixel columns (got {num_features})")
        return nn.Sequential(*layers, SmallCNN(side, spec.channels, num_classes, spec.activation, spec.dropout))
    if spec.name == "mlp":
        for h in spec.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def standardizer(model: nn.Module) -> Standardize:
    return model[0]


def moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column observed count, sum and sum of squares: what a hospital may share for scaling."""
    obs = ~np.isnan(X)
    Xz = np.where(obs, X, 0.0).astype(np.float64)
    return obs.sum(0).astype(np.float64), Xz.sum(0), (Xz**2).sum(0)


def mean_scale(count: np.ndarray, total: np.ndarray, sumsq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = np.maximum(count, 1.0)
    mean = total / count
    var = np.maximum(sumsq / count - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)
