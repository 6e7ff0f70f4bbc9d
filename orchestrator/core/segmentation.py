"""Segmentation: MONAI's U-Net and SegResNet as a `models.Net`, their loss and their metrics' inputs,
the patches training draws and the sliding windows inference slides.

Images travel as flat rows of pixels like every image job's; masks as flat rows of class indices
(`imaging.tables`). The network takes a flat row (the whole image) or a shaped patch [n, C, *patch].
In training (`model.patch_size` smaller than the image), `Patches` draws one patch per image from
each batch: half centred on a labelled pixel, half anywhere (MONAI's RandCropByPosNegLabel's rule),
from a seeded generator of its own; an image smaller than the patch is padded with black and
background. In evaluation the network covers a whole image with windows of the patch's size,
overlapping by half and blended with a Gaussian (MONAI's `sliding_window_inference`), so every
evaluation path (rounds, cross-site scores, predict, serve) segments whole images the same way.
"""
from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from orchestrator.core.layers import Net, Standardize, freeze, image_shape, norm_kind
from orchestrator.spec.model import ModelSpec

OVERLAP = 0.5          # windows overlap by half (nnU-Net's, MONAI's examples')
WINDOW_BATCH = 4       # windows run through the network at a time


class ChannelStandardize(Standardize):
    """Standardize whose buffers stay per pixel (as every image job's, so strategies and checkpoints
    see one layout) but that also scales a shaped patch [n, C, *spatial] by channel: image jobs'
    scaling is one mean and deviation per channel (`models.mean_scale`)."""

    def __init__(self, num_features: int, channels: int):
        super().__init__(num_features)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, self.channels, *(1,) * (x.ndim - 2))
        mean = self.mean.reshape(self.channels, -1)[:, 0].reshape(shape)
        scale = self.scale.reshape(self.channels, -1)[:, 0].reshape(shape)
        return (x - mean) / scale


class Segmenter(Net):
    """input (per-channel scaling), body (MONAI's network: features at every pixel), head (a 1x1
    convolution to one logit per label). Output: [n, labels, *spatial]."""

    input: ChannelStandardize

    def __init__(self, input: ChannelStandardize, body: nn.Module, head: nn.Module, side: int, dims: int,
                 patch: int | None):
        super().__init__(input, body, head)
        self.side, self.dims, self.patch = side, dims, patch

    def shaped(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.input.channels, *(self.side,) * self.dims) if x.ndim == 2 else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.input(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shaped(x)
        if self.training or self.patch is None or all(s == self.patch for s in x.shape[2:]):
            return self.logits(x)
        from monai.inferers import sliding_window_inference

        return cast(torch.Tensor, sliding_window_inference(
            x, (self.patch,) * self.dims, WINDOW_BATCH, self.logits, overlap=OVERLAP, mode="gaussian",
            padding_mode="constant", cval=0.0))


def divisor(spec: ModelSpec) -> int:
    """What the network's input side must divide by (its downsamplings)."""
    return 2 ** (len(spec.channels) - 1) if spec.name == "unet" else 8


def build_segmenter(spec: ModelSpec, num_features: int, num_classes: int) -> Segmenter:
    from monai.networks import nets

    dims = spec.spatial_dims
    shape = image_shape(num_features, dims)
    if shape is None:
        raise ValueError(f"model.name: {spec.name} needs square images (cubic volumes with spatial_dims 3) as "
                         f"pixel columns; got {num_features}")
    in_channels, side = shape
    width = spec.channels[0]
    kind = norm_kind(spec)
    norm: str | tuple = ("group", {"num_groups": _groups(spec.groups, spec.channels)}) if kind == "group" else \
        ("batch" if kind == "batch" else "instance")
    body: nn.Module
    if spec.name == "unet":
        body = nets.UNet(spatial_dims=dims, in_channels=in_channels, out_channels=width, channels=tuple(spec.channels),
                         strides=(2,) * (len(spec.channels) - 1), num_res_units=1, norm=norm, dropout=spec.dropout)
    else:
        body = nets.SegResNet(spatial_dims=dims, init_filters=width, in_channels=in_channels, out_channels=width,
                              dropout_prob=spec.dropout or None, norm=norm)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    head = nn.Sequential(nn.ReLU(), conv(width, num_classes, 1))
    model = Segmenter(ChannelStandardize(num_features, in_channels), body, head, side, dims, spec.patch_size)
    for m in model.modules():   # in-place activations break per-example gradients (Opacus' hooks)
        if getattr(m, "inplace", False) is True:
            setattr(m, "inplace", False)
    freeze(model, spec.freeze)
    return model


def _groups(groups: int, channels: list[int]) -> int:
    """GroupNorm's groups: model.groups where it divides every level's channels, else the largest that does."""
    return max(g for g in range(1, groups + 1) if all(c % g == 0 for c in channels))


class Patches:
    """One patch of `size` per image of a batch: centred on a labelled pixel with probability
    `positive`, else anywhere; seeded (its own generator: the batches shuffle as they would without it)."""

    def __init__(self, size: int, side: int, channels: int, dims: int, seed: int, positive: float = 0.5):
        self.size, self.side, self.channels, self.dims, self.positive = size, side, channels, dims, positive
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, s, p = x.shape[0], self.side, self.size
        x = x.reshape(n, self.channels, *(s,) * self.dims)
        y = y.reshape(n, *(s,) * self.dims)
        if s < p:   # an image smaller than the patch: black around it, background in its mask
            pad = [0, p - s] * self.dims
            x = nn.functional.pad(x, pad)
            y = nn.functional.pad(y, pad)
            s = p
        if s == p:
            return x, y
        start = (self._centres(y.reshape(n, -1), s) - p // 2).clamp(0, s - p)   # (n, dims): each patch's corner
        steps = torch.arange(p, device=x.device)
        axes = [(start[:, d, None] + steps).reshape(n, *(p if e == d else 1 for e in range(self.dims)))
                for d in range(self.dims)]   # each axis's indices, broadcast over the patch
        rows = torch.arange(n, device=x.device).reshape(n, *(1,) * self.dims)
        patch_y = y[(rows, *axes)]
        patch_x = x.movedim(1, -1)[(rows, *axes)].movedim(-1, 1).contiguous()
        return patch_x, patch_y

    def _centres(self, flat: torch.Tensor, s: int) -> torch.Tensor:
        """(n, dims) centres: a labelled pixel drawn uniformly for the positive draws (of images that
        hold one), else any pixel."""
        n = len(flat)
        anywhere = torch.randint(0, s**self.dims, (n,), generator=self.gen)
        labelled = flat.cpu() > 0
        chosen = (torch.rand(n, generator=self.gen) < self.positive) & labelled.any(1)
        if chosen.any():   # the k-th labelled pixel, k uniform: where the running count of them passes k
            counts = labelled[chosen].cumsum(1, dtype=torch.int32)
            k = (torch.rand(len(counts), generator=self.gen) * counts[:, -1]).long()
            anywhere[chosen] = (counts <= k[:, None]).sum(1)
        coords = []
        for _ in range(self.dims):   # the flat index as (slice,) row, column: last axis first
            coords.append(anywhere % s)
            anywhere = anywhere // s
        return torch.stack(coords[::-1], 1).to(flat.device)


def dice_loss(loss: str):
    """MONAI's Dice + cross-entropy (or Dice + focal): the Dice term over every label, background
    included, on softmax probabilities; targets are class indices."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    if loss == "dice_focal":
        return DiceFocalLoss(to_onehot_y=True, softmax=True)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def hausdorff95(pred: np.ndarray, y: np.ndarray, k: int, spacing: tuple[float, ...]) -> np.ndarray:
    """(cases, classes) 95th-percentile Hausdorff distances in millimetres (MONAI's), NaN where a
    case's truth or prediction lacks the class. `pred`, `y`: (cases, *spatial) class indices."""
    from monai.metrics import compute_hausdorff_distance

    out = np.full((len(y), k), np.nan)
    if len(y) == 0:
        return out
    eye = torch.eye(k, dtype=torch.float32)
    p1 = eye[torch.as_tensor(pred)].movedim(-1, 1)
    t1 = eye[torch.as_tensor(y)].movedim(-1, 1)
    import warnings

    with warnings.catch_warnings():   # MONAI warns for every empty class; those are NaN here
        warnings.simplefilter("ignore")
        found = compute_hausdorff_distance(p1, t1, include_background=True, percentile=95, spacing=list(spacing))
    d = found.cpu().numpy().astype(np.float64)
    empty = (t1.sum(tuple(range(2, t1.ndim))) == 0) | (p1.sum(tuple(range(2, p1.ndim))) == 0)
    d[empty.numpy()] = np.nan
    return d
