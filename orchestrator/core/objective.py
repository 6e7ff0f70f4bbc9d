"""What a model's outputs mean: the head and loss (`Objective`), the class weights, the metrics of a
batch of outputs (`scored`) and what a hospital sends for exact pooling (`pooled_sums`).

softmax/cross_entropy, sigmoid/bce, linear/mse|mae|huber, multilabel/bce and segmentation/dice_ce|
dice_focal; metrics live in metrics.py. The training loop (`training`) and every evaluation call these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.core import metrics as M
from orchestrator.spec.train import HEAD_LOSS, TrainSpec


def balanced_weights(label_counts: np.ndarray) -> list[float]:
    """scikit-learn's 'balanced': n / (classes * count); a class with no rows gets 1."""
    counts = np.asarray(label_counts, dtype=np.float64)
    n, k = counts.sum(), len(counts)
    return [float(n / (k * c)) if c > 0 else 1.0 for c in counts]


def class_weights(spec: TrainSpec, label_counts: np.ndarray | None) -> list[float] | None:
    if spec.class_weights == "balanced":
        return balanced_weights(label_counts) if label_counts is not None else None
    return list(spec.class_weights) if spec.class_weights else None


@dataclass
class Objective:
    """Head + loss: what the outputs mean, how they are scored, how they turn into predictions.

    softmax/cross_entropy: one logit per class. sigmoid/bce: one logit, P(second class).
    multilabel/bce: one logit per finding, each its own P(finding); labels are (rows, findings) 0/1.
    segmentation/dice_ce|dice_focal: one logit per label at every pixel [rows, labels, *spatial];
    labels are (rows, pixels) class indices; `spacing` (mm per pixel, where the job fixes it) adds HD95.
    linear/mse|mae|huber: one value; the loss is taken on residuals divided by the target's
    standard deviation (the model's output scale), so the learning rate does not depend on units.
    """

    head: str
    loss: str
    num_classes: int
    weights: list[float] | None = None
    target_scale: float = 1.0
    labels: tuple[str, ...] = ()   # multilabel: the findings, naming their metrics (auroc_<finding>)
    spacing: tuple[float, ...] | None = None   # segmentation: mm per pixel of the grid (HD95)
    _dice_loss: Any = field(default=None, init=False, repr=False, compare=False)   # MONAI's, made on first use

    @classmethod
    def of(cls, job, num_classes: int, weights: list[float] | None = None, model: nn.Module | None = None,
           labels: tuple[str, ...] = ()) -> Objective:
        scale = 1.0
        if job.model.head == "linear" and model is not None:
            scale = float(model.output.scale)
        spacing = tuple(job.data.spacing) if job.model.head == "segmentation" and job.data.spacing else None
        return cls(job.model.head, job.train.loss or HEAD_LOSS[job.model.head], num_classes, weights, scale,
                   tuple(labels), spacing)

    @property
    def regression(self) -> bool:
        return self.head == "linear"

    @property
    def multilabel(self) -> bool:
        return self.head == "multilabel"

    @property
    def segmentation(self) -> bool:
        return self.head == "segmentation"

    def _dice(self):
        if self._dice_loss is None:
            from orchestrator.core.segmentation import dice_loss

            self._dice_loss = dice_loss(self.loss)
        return self._dice_loss

    def per_example(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.segmentation:   # Dice is a ratio over a whole mask: one value per image
            target = y.reshape(out.shape[0], 1, *out.shape[2:])
            return torch.stack([self._dice()(out[i:i + 1].float(), target[i:i + 1]) for i in range(len(out))])
        if self.multilabel:   # one binary cross-entropy per finding, their mean per image
            return F.binary_cross_entropy_with_logits(out.float(), y.float(), reduction="none").mean(1)
        if self.loss == "cross_entropy":
            return F.cross_entropy(out.float(), y, reduction="none")
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(out[:, 0].float(), y.float(), reduction="none")
        r = (out[:, 0].float() - y.float()) / self.target_scale
        if self.loss == "mse":
            return r**2
        if self.loss == "mae":
            return r.abs()
        if self.loss == "huber":
            return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=1.0)
        raise ValueError(f"train.loss: unknown loss {self.loss!r}")

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.segmentation:
            return self._dice()(out.float(), y.reshape(out.shape[0], 1, *out.shape[2:]))
        losses = self.per_example(out, y)
        if self.weights is None or self.regression or self.multilabel:
            return losses.mean()
        w = torch.as_tensor(self.weights, dtype=losses.dtype, device=losses.device)[y]
        return (losses * w).sum() / w.sum()

    def probabilities(self, out: torch.Tensor) -> np.ndarray:
        """(rows, classes) class probabilities; multilabel: (rows, findings), each finding's own."""
        if self.multilabel:
            return torch.sigmoid(out.float()).cpu().numpy()
        if self.head == "sigmoid":
            p = torch.sigmoid(out[:, 0].float())
            return torch.stack([1 - p, p], 1).cpu().numpy()
        return torch.softmax(out.float(), 1).cpu().numpy()

    def scores(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Every metric of this task on one batch of outputs (regression: in target units)."""
        yn = y.cpu().numpy()
        if self.regression:
            return M.regression(yn, out[:, 0].float().cpu().numpy())
        if self.multilabel:
            return M.multilabel(yn, self.probabilities(out), self.labels)
        if self.segmentation:
            return M.from_segmentation_sums(self.sums(out, y), self.labels, hd95=self.spacing is not None)
        return M.classification(yn, self.probabilities(out))

    def sums(self, out: torch.Tensor | None, y: torch.Tensor) -> np.ndarray:
        """Segmentation: the case sums `metrics.from_segmentation_sums` pools (HD95 where `spacing`)."""
        k = self.num_classes
        if out is None or len(y) == 0:
            return M.segmentation_sums(np.zeros((0, 1), dtype=np.int64), np.zeros((0, 1), dtype=np.int64), k)
        pred, truth = self.predict(out), y.cpu().numpy().reshape(len(y), -1)
        hd = None
        if self.spacing is not None:
            from orchestrator.core.segmentation import hausdorff95

            spatial = tuple(out.shape[2:])
            hd = hausdorff95(pred.reshape(-1, *spatial), truth.reshape(-1, *spatial), k, self.spacing)
        return M.segmentation_sums(truth, pred, k, hd)

    def predict(self, out: torch.Tensor) -> np.ndarray:
        """Labels (rows,); a regression's values; multilabel: (rows, findings) of 0/1."""
        if self.regression:
            return out[:, 0].float().cpu().numpy()
        if self.multilabel:
            return (self.probabilities(out) >= 0.5).astype(np.int64)
        if self.segmentation:   # (rows, pixels): each pixel's most likely label
            return out.argmax(1).reshape(out.shape[0], -1).cpu().numpy()
        return self.probabilities(out).argmax(1)


def scored(out: torch.Tensor | None, y: torch.Tensor, objective: Objective) -> dict:
    """Loss and every metric of the task from a model's outputs `out` on rows labelled `y`."""
    if len(y) == 0:
        return {"loss": float("nan"), "num_examples": 0}
    return {"loss": float(objective(out, y)), **objective.scores(out, y), "num_examples": int(len(y))}


def pooled_sums(out: torch.Tensor | None, y: torch.Tensor, num_classes: int, objective: Objective) -> np.ndarray:
    """What a hospital sends for exact pooling (`metrics.from_sums`): confusion counts (k, k),
    regression sums, or multi-label sums."""
    if objective.regression:
        return M.regression_sums(y.cpu().numpy(), objective.predict(out) if out is not None else np.zeros(0))
    if objective.segmentation:
        return objective.sums(out, y)
    if objective.multilabel:
        return M.multilabel_sums(y.cpu().numpy(),
                                 objective.predict(out) if out is not None else np.zeros((0, num_classes)))
    return confusion_of(out, y, num_classes, objective)


def confusion_of(out: torch.Tensor | None, y: torch.Tensor, num_classes: int, objective: Objective) -> np.ndarray:
    """Confusion counts of outputs `out` on rows labelled `y` (rows: true, columns: predicted label)."""
    if len(y) == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return M.confusion(y.cpu().numpy(), objective.predict(out), num_classes)
