"""The training loop: one step (`train_epoch`: loss, proximal term, clipping, correction, step) and
its epochs (`train_epochs`: seeded shuffling, the lr schedule, steps and their lr summed).

Who runs what. The centralized runner, a hospital's local epochs (plain, FedProx, SCAFFOLD: the
strategy's hook), FedRep's and Ditto's personal epochs and fine-tuning call `train_epochs`. Three
loops are built from the same parts and differ where they must:
- `jobs/ray/worker.py`: one epoch of `train_epoch` per DDP worker over its shard of every batch,
  with mixed precision, per-rank dropout seeds, reduced metrics and checkpoints between epochs;
- `clients/privacy.py`: Opacus' DP-SGD owns the batches (Poisson sampling, empty batches) and the
  optimizer (per-example clipping and noise), so only `make_optimizer` and the schedule are shared;
- `core/stacked.py`: many hospitals' epochs at once; torch's optimizers keep one step count per
  tensor, and a stacked tensor holds K hospitals that step a different number of times, so it
  writes the same update rules per hospital with the constants below (`ADAM_BETAS`, ...).

Registries for what YAML names: optimizers (`make_optimizer`), losses and heads (`Objective`, in objective.py),
learning-rate schedules (`lr_factor`), early stopping (`EarlyStopping`); metrics live in metrics.py.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.core.objective import (  # noqa: F401 - what outputs mean, importable from here
    Objective, balanced_weights, class_weights, confusion_of, pooled_sums, scored)
from orchestrator.spec.train import EarlyStoppingSpec, OptimizerSpec, ScheduleSpec, TrainSpec

# The update rules' constants (torch's defaults; tests/unit/test_stacked.py checks they still are):
# the per-hospital optimizers and the stacked ones (core.stacked) both read them here.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8


def make_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]  # frozen layers (model.freeze) stay as they are
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    if spec.name in ("adam", "adamw"):
        return (torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW)(
            params, lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=spec.weight_decay)
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS, momentum=spec.momentum,
                                   weight_decay=spec.weight_decay)
    raise ValueError(f"train.optimizer.name: unknown optimizer {spec.name!r}")


def lr_factor(spec: ScheduleSpec, epoch: int, total: int) -> float:
    """Multiplier of the base learning rate in (0-based) `epoch` of `total`."""
    if epoch < spec.warmup_epochs:
        return (epoch + 1) / (spec.warmup_epochs + 1)
    e, span = epoch - spec.warmup_epochs, max(total - spec.warmup_epochs, 1)
    if spec.name == "step":
        return spec.gamma ** (e // spec.step_size)
    if spec.name == "cosine":
        floor = spec.min_lr_fraction
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(e, span) / span))
    return 1.0


def tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Features as float32; labels as int64 (classes) or float32 (a regression target)."""
    y = np.asarray(y)
    ydtype = torch.float32 if np.issubdtype(y.dtype, np.floating) else torch.long
    return torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=ydtype)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, X: torch.Tensor,
                y: torch.Tensor, batches, autocast_dtype: torch.dtype | None = None,
                proximal: tuple[float, list[torch.Tensor]] | None = None,
                grad_clip: float | None = None, correction: list[torch.Tensor] | None = None,
                augment=None, patches=None) -> tuple[float, int]:
    """One pass over `batches` (index tensors); returns (sum of per-example losses, examples).

    `proximal=(mu, anchor)` adds FedProx's (mu/2)·||w - anchor||² to every step's loss; the
    returned loss is the task loss alone, comparable across strategies. `grad_clip` caps the
    global gradient norm of every step. `correction` (one tensor per trainable parameter) is added
    to every step's gradient: SCAFFOLD's control-variate correction c - c_i.
    """
    from orchestrator.core.models import BATCH_NORMS, train_mode

    train_mode(model)
    total, seen = 0.0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    for idx in batches:
        if len(idx) < 2 and any(isinstance(m, BATCH_NORMS) for m in model.modules()):
            continue  # batch norm cannot normalise a batch of one
        opt.zero_grad(set_to_none=True)
        xb, yb = X[idx], y[idx]
        if patches is not None:   # segmentation: one patch per image (model.patch_size)
            xb, yb = patches(xb, yb)
        elif augment is not None:   # train.augment: training batches only
            xb = augment(xb)
        if autocast_dtype is not None:
            with torch.autocast(device_type=X.device.type, dtype=autocast_dtype):
                loss = loss_fn(model(xb), yb)
        else:
            loss = loss_fn(model(xb), yb)
        if proximal is not None and proximal[0] > 0:
            mu, anchor = proximal
            penalty = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            (loss + 0.5 * mu * penalty).backward()
        else:
            loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if correction is not None:
            for p, c in zip(params, correction):
                if p.grad is not None:
                    p.grad.add_(c)
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total, seen


def segmentation_patches(model: nn.Module, seed: int):
    """A segmentation network's patch sampler (model.patch_size), else None."""
    base: Any = getattr(model, "module", model)   # DDP wraps it
    patch = getattr(base, "patch", None)
    if patch is None:
        return None
    from orchestrator.core.segmentation import Patches

    return Patches(patch, base.side, base.input.channels, base.dims, seed * 53 + 29)


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def set_lr(opt: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for group in opt.param_groups:
        group["lr"] = base_lr * factor
    return base_lr * factor


def train_epochs(model: nn.Module, X: torch.Tensor, y: torch.Tensor, spec: TrainSpec, epochs: int,
                 seed: int, on_epoch=None, proximal_mu: float = 0.0, objective: Objective | None = None,
                 epoch_offset: int = 0, total_epochs: int | None = None,
                 correction: list[torch.Tensor] | None = None, stats: dict | None = None,
                 proximal_to: list[torch.Tensor] | None = None) -> float:
    """Minibatch training; returns the mean loss of the last epoch.

    `on_epoch(epoch, loss)` runs after every epoch and may return True to stop (early stopping).
    The learning rate follows train.schedule at global epoch `epoch_offset + e` of `total_epochs`
    (a federated hospital trains epochs `(round-1)*E ...` of `rounds*E`). With `proximal_mu` > 0
    (FedProx) every step is pulled towards the weights the model started with, or towards
    `proximal_to` (one tensor per trainable parameter: Ditto's global weights). `stats`, if given,
    receives `steps` (optimizer steps taken) and `lr_sum` (their learning rates summed).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.default_generator.manual_seed(seed)  # dropout masks; torch.manual_seed also seeds every
    if X.is_cuda:                              # accelerator, at a cost per call even on a machine with none
        torch.cuda.manual_seed(seed)
    opt = make_optimizer(model.parameters(), spec.optimizer)
    loss_fn = objective or Objective("softmax", "cross_entropy", 0)
    proximal = None
    if proximal_mu > 0:
        anchor = proximal_to if proximal_to is not None else [p.detach() for p in model.parameters() if p.requires_grad]
        proximal = (proximal_mu, [a.clone() for a in anchor])
    total_epochs = total_epochs or epochs
    augment = None
    if spec.augment.enabled:   # its own generator: the batches shuffle as they would without it
        from orchestrator.core.augment import Augment

        augment = Augment(spec.augment, X.shape[1], seed * 31 + 17)
    patches = segmentation_patches(model, seed)
    last = float("nan")
    steps, lr_sum = 0, 0.0
    for epoch in range(epochs):
        lr = set_lr(opt, spec.optimizer.lr, lr_factor(spec.schedule, epoch_offset + epoch, total_epochs))
        batches = shuffled_batches(len(y), spec.batch_size, gen)
        total, seen = train_epoch(model, opt, loss_fn, X, y, batches,
                                  proximal=proximal, grad_clip=spec.grad_clip, correction=correction, augment=augment,
                                  patches=patches)
        steps, lr_sum = steps + len(batches), lr_sum + lr * len(batches)
        if stats is not None:
            stats.update(steps=steps, lr_sum=lr_sum)
        last = total / max(seen, 1)
        if on_epoch is not None and on_epoch(epoch + 1, last):
            break
    return last


def forward(model: nn.Module, X: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """The model's outputs on every row of X, `batch` rows at a time (default: 512 rows, fewer for
    wide rows: 4 Mi input values per chunk, e.g. 27 RGB images of 224 x 224): an image network's
    activations for a whole test split never sit in memory at once (nor does a memory-mapped split)."""
    if batch is None:
        batch = max(8, min(512, (1 << 22) // max(1, int(np.prod(X.shape[1:])))))
    if len(X) <= batch:
        return model(X)
    return torch.cat([model(X[i:i + batch]) for i in range(0, len(X), batch)])


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, objective: Objective | None = None) -> dict:
    """Loss and every metric of the task, plus num_examples."""
    objective = objective or Objective("softmax", "cross_entropy", 0)
    model.eval()
    return scored(forward(model, X) if len(y) else None, y, objective)


@torch.no_grad()
def confusion_counts(model: nn.Module, X: torch.Tensor, y: torch.Tensor, num_classes: int,
                     objective: Objective | None = None) -> np.ndarray:
    model.eval()
    objective = objective or Objective("softmax", "cross_entropy", num_classes)
    return confusion_of(forward(model, X) if len(y) else None, y, num_classes, objective)


class EarlyStopping:
    """Watches one validation metric; keeps a copy of the best weights to restore at the end."""

    def __init__(self, spec: EarlyStoppingSpec):
        self.spec = spec
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        delta = self.spec.min_delta
        return value < self.best - delta if self.spec.mode == "min" else value > self.best + delta

    def step(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record `value` of `epoch`; True when training should stop."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.spec.restore_best:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.spec.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, model: nn.Module) -> bool:
        if self.spec.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
            return True
        return False

    def summary(self) -> dict[str, float]:
        return {"early_stopping/best_epoch": float(self.best_epoch),
                "early_stopping/best_value": float(self.best) if self.best is not None else float("nan"),
                "early_stopping/stopped_epoch": float(self.stopped_epoch or 0)}


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) out of the training rows, for early stopping."""
    perm = np.random.default_rng(seed + 424_242).permutation(n)
    k = min(max(1, int(round(n * fraction))), n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])
