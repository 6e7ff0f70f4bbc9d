"""The one training loop: used by the centralized runner, the Flower hospitals and (next) Ray workers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from orchestrator.config import OptimizerSpec, TrainSpec


def make_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise ValueError(f"train.optimizer.name: unknown optimizer {spec.name!r}")


def make_loss(name: str) -> nn.Module:
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    raise ValueError(f"train.loss: unknown loss {name!r}")


def tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, X: torch.Tensor,
                y: torch.Tensor, batches, autocast_dtype: torch.dtype | None = None,
                proximal: tuple[float, list[torch.Tensor]] | None = None) -> tuple[float, int]:
    """One pass over `batches` (index tensors); returns (sum of per-example losses, examples).

    `proximal=(mu, anchor)` adds FedProx's (mu/2)·||w - anchor||² to every step's loss; the
    returned loss is the task loss alone, comparable across strategies.
    """
    model.train()
    total, seen = 0.0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        if autocast_dtype is not None:
            with torch.autocast(device_type=X.device.type, dtype=autocast_dtype):
                loss = loss_fn(model(X[idx]), y[idx])
        else:
            loss = loss_fn(model(X[idx]), y[idx])
        if proximal is not None and proximal[0] > 0:
            mu, anchor = proximal
            penalty = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            (loss + 0.5 * mu * penalty).backward()
        else:
            loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total, seen


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def train_epochs(model: nn.Module, X: torch.Tensor, y: torch.Tensor, spec: TrainSpec, epochs: int,
                 seed: int, on_epoch=None, proximal_mu: float = 0.0) -> float:
    """Minibatch training; returns the mean loss of the last epoch. `on_epoch(epoch, loss)` per epoch.

    With `proximal_mu` > 0 (FedProx) every step is pulled towards the weights the model started with.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    opt = make_optimizer(model.parameters(), spec.optimizer)
    loss_fn = make_loss(spec.loss)
    proximal = None
    if proximal_mu > 0:
        proximal = (proximal_mu, [p.detach().clone() for p in model.parameters() if p.requires_grad])
    last = float("nan")
    for epoch in range(epochs):
        total, seen = train_epoch(model, opt, loss_fn, X, y, shuffled_batches(len(y), spec.batch_size, gen),
                                  proximal=proximal)
        last = total / max(seen, 1)
        if on_epoch is not None:
            on_epoch(epoch + 1, last)
    return last


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_name: str = "cross_entropy") -> dict:
    model.eval()
    if len(y) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "num_examples": 0}
    logits = model(X)
    loss = float(make_loss(loss_name)(logits, y))
    acc = int((logits.argmax(1) == y).sum()) / len(y)  # exact, not a float32 mean
    return {"loss": loss, "accuracy": acc, "num_examples": int(len(y))}


@torch.no_grad()
def confusion_counts(model: nn.Module, X: torch.Tensor, y: torch.Tensor, num_classes: int) -> np.ndarray:
    """Rows: true label, columns: predicted label."""
    model.eval()
    if len(y) == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    pred = model(X).argmax(1)
    idx = (y * num_classes + pred).cpu().numpy()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
