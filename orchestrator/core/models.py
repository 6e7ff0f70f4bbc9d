"""Model registry: YAML `model:` -> torch.nn.Module. Plain torch, shared by every runner.

Every model is a `Net` of three named parts, so YAML can point at them (`model.freeze: [input, body]`):
  input  Standardize: the consortium's feature mean/scale, so the logged model takes raw values
  body   the family's layers (mlp, cnn, rnn/lstm/gru, transformer; logistic: nothing)
  head   the last linear layer: one output per class (softmax), or one (sigmoid, linear)
  output a regression head's scaling back to target units (linear head only)
"""
from __future__ import annotations

import math
from typing import cast

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


class ConvBody(nn.Module):
    """Conv(3x3) [+BatchNorm] + activation + 2x2 pool per entry of `channels`. Input: flat square images."""

    def __init__(self, side: int, channels: list[int], activation: str, dropout: float, batchnorm: bool):
        super().__init__()
        self.side = side
        layers: list[nn.Module] = []
        c_in, s = 1, side
        for c in channels:
            layers.append(nn.Conv2d(c_in, c, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(ACTIVATIONS[activation]())
            if s >= 4:
                layers.append(nn.MaxPool2d(2))
                s //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Flatten(), nn.Dropout(dropout))
        self.width = c_in * s * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x.reshape(-1, 1, self.side, self.side)))


class RecurrentBody(nn.Module):
    """rnn / lstm / gru over steps of `input_size` features; the last step's state feeds the head."""

    CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(self, cell: str, input_size: int, hidden: list[int], dropout: float):
        super().__init__()
        self.input_size = input_size
        self.rnn = self.CELLS[cell](input_size, hidden[0], num_layers=len(hidden), batch_first=True,
                                    dropout=dropout if len(hidden) > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.width = hidden[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], -1, self.input_size))
        return self.drop(out[:, -1])


class TransformerBody(nn.Module):
    """A tiny transformer encoder: step projection + learned positions, mean-pooled over steps."""

    def __init__(self, steps: int, input_size: int, width: int, layers: int, heads: int, dropout: float,
                 activation: str):
        super().__init__()
        self.input_size = input_size
        self.embed = nn.Linear(input_size, width)
        self.position = nn.Parameter(torch.randn(1, steps, width) / math.sqrt(width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           activation="gelu" if activation == "gelu" else "relu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], -1, self.input_size)) + self.position
        return self.encoder(h).mean(1)


def image_side(num_features: int) -> int | None:
    side = int(round(num_features**0.5))
    return side if side * side == num_features else None


def num_outputs(spec: ModelSpec, num_classes: int) -> int:
    return num_classes if spec.head == "softmax" else 1


def _body(spec: ModelSpec, num_features: int) -> tuple[nn.Module, int]:
    if spec.name == "logistic":
        return nn.Identity(), num_features
    if spec.name == "cnn":
        side = image_side(num_features)
        if side is None:
            raise ValueError(f"model.name: cnn needs a square number of pixel columns (got {num_features})")
        body = ConvBody(side, spec.channels, spec.activation, spec.dropout, spec.batchnorm)
        return body, body.width
    if spec.name in RecurrentBody.CELLS:
        body = RecurrentBody(spec.name, spec.input_size, spec.hidden, spec.dropout)
        return body, body.width
    if spec.name == "transformer":
        body = TransformerBody(num_features // spec.input_size, spec.input_size, spec.hidden[0], len(spec.hidden),
                               spec.heads, spec.dropout, spec.activation)
        return body, body.width
    layers: list[nn.Module] = []
    width = num_features
    for h in spec.hidden:
        layers.append(nn.Linear(width, h))
        if spec.batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    return nn.Sequential(*layers), width


def build_model(spec: ModelSpec, num_features: int, num_classes: int) -> Net:
    """The model of `spec`, its frozen parameters (model.freeze) already excluded from training."""
    if spec.name == "gan":
        from orchestrator.core.gan import TabularGAN

        return TabularGAN(Standardize(num_features), num_features, num_classes, spec.hidden, spec.latent_dim,
                          spec.activation)
    body, width = _body(spec, num_features)
    output = Destandardize() if spec.head == "linear" else None
    model = Net(Standardize(num_features), body, nn.Linear(width, num_outputs(spec, num_classes)), output)
    freeze(model, spec.freeze)
    return model


def parameter_groups(model: nn.Module) -> list[str]:
    """The names `model.freeze` accepts: every named layer (input, body, body.features.0, head ...)."""
    return sorted(name for name, _ in model.named_modules() if name)


def train_mode(model: nn.Module) -> None:
    """model.train(), except that batch norm inside frozen layers keeps its running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, BATCH_NORMS) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


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


def standardizer(model: nn.Module) -> Standardize:
    return cast(Standardize, model.input)


def prepare(model: Net, X_train: np.ndarray, y_train: np.ndarray, standardize: bool) -> None:
    """Input scaling and (regression) output scaling from training rows the caller may see."""
    if standardize:
        model.input.set(*mean_scale(*moments(X_train)))
    if isinstance(model.output, Destandardize):
        y = np.asarray(y_train, dtype=np.float64)
        model.output.set(y.mean() if len(y) else 0.0, y.std() if len(y) else 1.0)


def transfer(model: nn.Module, source: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor of `source` whose name and shape match; returns (copied, fresh) names."""
    own = model.state_dict()
    copied = [k for k, v in source.items() if k in own and own[k].shape == v.shape]
    own.update({k: source[k].detach().to(own[k].dtype) for k in copied})
    model.load_state_dict(own)
    return copied, sorted(set(own) - set(copied))


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
