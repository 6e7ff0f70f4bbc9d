"""Training-side image augmentation (`train.augment`), on whole batches of flat images in torch:
flips, a rotation and a shift in one affine resampling, then an intensity jitter. Every draw comes
from the generator given, so a hospital's round repeats exactly; evaluation never sees it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from orchestrator.core.models import image_shape


class Augment:
    def __init__(self, spec, num_features: int, seed: int):
        shape = image_shape(num_features)
        if shape is None:
            raise ValueError(f"train.augment: needs square images as pixel columns (got {num_features} columns)")
        self.channels, self.side = shape
        self.spec = spec
        self.gen = torch.Generator().manual_seed(seed)

    def _uniform(self, n: int, bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.gen) * 2.0 - 1.0) * bound

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        s, n = self.spec, xb.shape[0]
        x = xb.reshape(n, self.channels, self.side, self.side)
        sx = torch.ones(n)
        sy = torch.ones(n)
        if s.flip:
            sx = torch.where(torch.rand(n, generator=self.gen) < 0.5, -1.0, 1.0)
        if s.vflip:
            sy = torch.where(torch.rand(n, generator=self.gen) < 0.5, -1.0, 1.0)
        angle = self._uniform(n, math.radians(s.rotate)) if s.rotate > 0 else torch.zeros(n)
        tx = self._uniform(n, 2.0 * s.shift) if s.shift > 0 else torch.zeros(n)   # [-1, 1] spans the side
        ty = self._uniform(n, 2.0 * s.shift) if s.shift > 0 else torch.zeros(n)
        if s.flip or s.vflip or s.rotate > 0 or s.shift > 0:
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1),
                                 torch.stack([sin * sx, cos * sy, ty], 1)], 1).to(x.dtype)
            grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if s.jitter > 0:
            scale = (1.0 + self._uniform(n, s.jitter)).to(x.device, x.dtype).view(n, 1, 1, 1)
            offset = self._uniform(n, s.jitter).to(x.device, x.dtype).view(n, 1, 1, 1)
            x = x * scale + offset
        return x.reshape(n, -1)
