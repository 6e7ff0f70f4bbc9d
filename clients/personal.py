"""A hospital's personal model (`federated.personalize`), made after the last round from the final
global model and this hospital's own rows only (`clients.handlers.personalize` answers with its
scores). `finetune`: k more local epochs at a constant learning rate."""
from __future__ import annotations

import torch

from orchestrator.core.models import standardizer, train_mode
from orchestrator.core.training import train_epochs


def finetune(h, model: torch.nn.Module, objective) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Train `model` (the global one) on `h`'s training rows; its outputs on `h`'s test rows, and their labels."""
    spec = h.job.federated.personalize
    X, y, X_test, y_test = h.tensors(standardizer(model).mean.numpy())
    # a constant learning rate from the end of training (train.optimizer.lr unless personalize.lr)
    train = h.job.train
    lr = spec.lr if spec.lr is not None else train.optimizer.lr
    train = train.model_copy(update={"optimizer": train.optimizer.model_copy(update={"lr": lr}),
                                     "schedule": train.schedule.model_copy(update={"name": "constant",
                                                                                    "warmup_epochs": 0})})
    train_mode(model)
    if len(y):
        train_epochs(model, X, y, train, spec.epochs, seed=h.job.seed * 100_003 + 7_919 + h.partition_id,
                     objective=objective)
    model.eval()
    with torch.no_grad():
        return (model(X_test) if len(y_test) else None), y_test
