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

from orchestrator.core.layers import (  # noqa: F401 - the parts of every model, importable from here
    ACTIVATIONS, BATCH_NORMS, Destandardize, Net, Standardize, freeze, image_shape, image_side, norm_kind, norm_layer,
    parameter_groups, to_group_norm)
from orchestrator.spec.model import IMAGE_MODELS, ModelSpec


class ConvBody(nn.Module):
    """Conv(3x3) [+norm] + activation + 2x2 pool per entry of `channels`. Input: flat square images
    of `in_channels` planes (grey 1, RGB 3); `dims` 3: flat cubic volumes (Conv3d, 2x2x2 pools)."""

    def __init__(self, side: int, channels: list[int], activation: str, dropout: float, norm: str,
                 groups: int = 8, in_channels: int = 1, dims: int = 2):
        super().__init__()
        self.side, self.in_channels, self.dims = side, in_channels, dims
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.MaxPool3d)
        layers: list[nn.Module] = []
        c_in, s = in_channels, side
        for c in channels:
            layers.append(conv(c_in, c, 3, padding=1))
            layer = norm_layer(norm, c, groups, dims)
            if layer is not None:
                layers.append(layer)
            layers.append(ACTIVATIONS[activation]())
            if s >= 4:
                layers.append(pool(2))
                s //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Flatten(), nn.Dropout(dropout))
        self.width = c_in * s**dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x.reshape(-1, self.in_channels, *(self.side,) * self.dims)))


class MonaiBody(nn.Module):
    """One of MONAI's networks (2D, or 3D with `dims` 3) without its classifier: flat images in,
    pooled features out (the head is ours, so `model.freeze: [input, body]` fine-tunes the head alone)."""

    def __init__(self, name: str, side: int, in_channels: int, norm: str, groups: int, dropout: float,
                 dims: int = 2):
        super().__init__()
        from monai.networks import nets

        self.side, self.in_channels, self.dims = side, in_channels, dims
        monai_norm: str | tuple = ("group", {"num_groups": groups}) if norm == "group" else \
            ("batch" if norm == "batch" else "instance")
        if name.startswith("resnet"):
            net = getattr(nets, name)(spatial_dims=dims, n_input_channels=in_channels, num_classes=1,
                                      feed_forward=False, norm=monai_norm, conv1_t_size=7 if side >= 64 else 3,
                                      conv1_t_stride=2 if side >= 64 else 1, no_max_pool=side < 64)
            self.width = 2048 if name == "resnet50" else 512   # layer4's planes x its block's expansion
        elif name == "densenet121":
            net = nets.DenseNet121(spatial_dims=dims, in_channels=in_channels, out_channels=1, norm=monai_norm,
                                   dropout_prob=0.0)
            self.width = cast(nn.Linear, net.class_layers.out).in_features
            setattr(net.class_layers, "out", nn.Identity())
        else:  # efficientnet_b0
            net = nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=dims, in_channels=in_channels,
                                      num_classes=1, norm=monai_norm)
            self.width = net._fc.in_features
            setattr(net, "_fc", nn.Identity())
        if norm == "group":   # MONAI 1.6's ResNet builds its blocks with batch norm whatever `norm` says
            to_group_norm(net, groups)
        for m in net.modules():   # in-place activations break per-example gradients (Opacus' hooks)
            if getattr(m, "inplace", False) is True:
                setattr(m, "inplace", False)
        out_of_place_residuals(net)
        self.net = net
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.net(x.reshape(-1, self.in_channels, *(self.side,) * self.dims)))


def _residual_forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.act(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if hasattr(self, "conv3"):   # a bottleneck block
        out = self.bn3(self.conv3(self.act(out)))
    residual = self.downsample(x) if self.downsample is not None else x
    return self.act(out + residual)


OUT_OF_PLACE = ("OutOfPlaceResNetBlock", "OutOfPlaceResNetBottleneck")


def _out_of_place_classes() -> dict[type, type]:
    """MONAI's block class -> the same block adding out of place; made once, kept in this module's
    namespace under its own name (so a pickled model, sent to the tracking process, loads back)."""
    from monai.networks.nets import resnet

    found: dict[type, type] = {}
    for kind, name in zip((resnet.ResNetBlock, resnet.ResNetBottleneck), OUT_OF_PLACE):
        if name not in globals():
            globals()[name] = type(name, (kind,), {"forward": _residual_forward, "__module__": __name__})
        found[kind] = globals()[name]
    return found


def __getattr__(name: str):
    """Module attributes made on first use: MONAI's ResNet blocks made out of place."""
    if name in OUT_OF_PLACE:
        _out_of_place_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def out_of_place_residuals(net: nn.Module) -> None:
    """MONAI's ResNet blocks add their shortcut in place (`out += residual`) onto their last norm
    layer's output, which Opacus' backward hooks forbid; the same blocks, adding out of place (the
    weights and their names unchanged)."""
    classes = _out_of_place_classes()
    for m in net.modules():
        if type(m) in classes:
            m.__class__ = classes[type(m)]


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


def num_outputs(spec: ModelSpec, num_classes: int) -> int:
    return num_classes if spec.head in ("softmax", "multilabel") else 1


def _body(spec: ModelSpec, num_features: int) -> tuple[nn.Module, int]:
    if spec.name == "logistic":
        return nn.Identity(), num_features
    if spec.name in IMAGE_MODELS:
        dims = spec.spatial_dims
        shape = image_shape(num_features, dims)
        if shape is None:
            what = "square images" if dims == 2 else "cubic volumes (model.spatial_dims 3)"
            raise ValueError(f"model.name: {spec.name} needs {what} as pixel columns (side^{dims} grey, "
                             f"or 3 x side^{dims} RGB; got {num_features})")
        in_channels, side = shape
        image_body: ConvBody | MonaiBody
        if spec.name == "cnn":
            image_body = ConvBody(side, spec.channels, spec.activation, spec.dropout, norm_kind(spec), spec.groups,
                                  in_channels, dims)
        else:
            image_body = MonaiBody(spec.name, side, in_channels, norm_kind(spec), spec.groups, spec.dropout, dims)
        return image_body, image_body.width
    if spec.name in RecurrentBody.CELLS:
        recurrent = RecurrentBody(spec.name, spec.input_size, spec.hidden, spec.dropout)
        return recurrent, recurrent.width
    if spec.name == "transformer":
        body = TransformerBody(num_features // spec.input_size, spec.input_size, spec.hidden[0], len(spec.hidden),
                               spec.heads, spec.dropout, spec.activation)
        return body, body.width
    layers: list[nn.Module] = []
    width = num_features
    for h in spec.hidden:
        layers.append(nn.Linear(width, h))
        layer = norm_layer(norm_kind(spec), h, spec.groups, dims=1)
        if layer is not None:
            layers.append(layer)
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    return nn.Sequential(*layers), width


def build_model(spec: ModelSpec, num_features: int, num_classes: int) -> Net:  # noqa: C901
    """The model of `spec`, its frozen parameters (model.freeze) already excluded from training."""
    if spec.name == "gan":
        from orchestrator.core.gan import TabularGAN

        return TabularGAN(Standardize(num_features), num_features, num_classes, spec.hidden, spec.latent_dim,
                          spec.activation)
    if spec.head == "segmentation":
        from orchestrator.core.segmentation import build_segmenter

        return build_segmenter(spec, num_features, num_classes)
    body, width = _body(spec, num_features)
    output = Destandardize() if spec.head == "linear" else None
    model = Net(Standardize(num_features), body, nn.Linear(width, num_outputs(spec, num_classes)), output)
    freeze(model, spec.freeze)
    return model


def train_mode(model: nn.Module) -> None:
    """model.train(), except that batch norm inside frozen layers keeps its running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, BATCH_NORMS) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def standardizer(model: nn.Module) -> Standardize:
    return cast(Standardize, model.input)


def prepare(model: Net, X_train: np.ndarray, y_train: np.ndarray, standardize: bool, channels: int | None = None) -> None:
    """Input scaling and (regression) output scaling from training rows the caller may see;
    `channels`: images, scaled per channel (`mean_scale`)."""
    if standardize:
        model.input.set(*mean_scale(*moments(X_train), channels=channels))
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


def image_channels(job) -> int | None:
    """The channels an image job's input scaling pools over (None: per column, as tables are)."""
    return int(job.data.channels) if job.data.source == "images" else None


def moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column observed count, sum and sum of squares: what a hospital may share for scaling."""
    from orchestrator.core.splits import rows_per_chunk

    count, total, sumsq = (np.zeros(X.shape[1:], dtype=np.float64) for _ in range(3))
    chunk = rows_per_chunk(X, 24)   # a chunk at a time: a memory-mapped archive is read, never copied whole
    for i in range(0, len(X), chunk):
        part = X[i:i + chunk]
        obs = ~np.isnan(part)
        Xz = np.where(obs, part, 0.0).astype(np.float64)
        count += obs.sum(0)
        total += Xz.sum(0)
        sumsq += (Xz**2).sum(0)
    return count, total, sumsq


def mean_scale(count: np.ndarray, total: np.ndarray, sumsq: np.ndarray, channels: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation from counts, sums and sums of squares (a hospital's,
    or the consortium's summed). `channels` (images, flat channel-major pixels): one mean and
    deviation per channel, over all its pixels, as image networks expect."""
    if channels:
        pooled = [np.asarray(a, dtype=np.float64).reshape(channels, -1) for a in (count, total, sumsq)]
        width = pooled[0].shape[1]
        mean, scale = mean_scale(*(a.sum(1) for a in pooled))
        return np.repeat(mean, width), np.repeat(scale, width)
    count = np.maximum(count, 1.0)
    mean = total / count
    var = np.maximum(sumsq / count - mean**2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)
