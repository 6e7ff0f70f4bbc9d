"""A hospital's personal model (`federated.personalize`), made from the global model and this
hospital's own rows only; it never leaves the hospital unless the job says hospitals share it.

  finetune  after the last round: k more local epochs from the final global model
  fedper    the head (last layer) stays at the hospital: every round it trains the global body
            under its own head and keeps the head; the personal model is global body + own head
  fedrep    as fedper, but each round trains its own head first (k epochs, body frozen), then the
            body (head frozen)
  fedbn     batch-norm layers (weights and running statistics) stay at the hospital
  ditto     a whole personal model v trained every round beside the global one, pulled towards
            the global weights w: loss_i(v) + lambda/2 ||v - w||^2

The stateful methods keep their part in the hospital's Flower Context and, when a state-dir is
known, in a file per round (`clients.kept`), so a resumed run finds it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from clients import kept
from orchestrator.core.models import BATCH_NORMS, standardizer, train_mode
from orchestrator.core.training import train_epochs

KEY = "personal"
LOCAL_PARTS = ("fedper", "fedrep", "fedbn")      # part of the model stays local
STATEFUL = (*LOCAL_PARTS, "ditto")              # something persists between rounds


def method(h) -> str | None:
    spec = h.job.federated.personalize
    return spec.method if spec is not None else None


def local_keys(model: nn.Module, how: str) -> list[str]:
    """The state-dict keys that stay at the hospital under `how`."""
    if how in ("fedper", "fedrep"):
        return [k for k in model.state_dict() if k.startswith("head.")]
    if how == "fedbn":
        return [f"{name}.{k}" if name else k for name, m in model.named_modules()
                if isinstance(m, BATCH_NORMS) for k in m.state_dict()]
    return []


def _state(h, context, message, server_round: int) -> dict | None:
    return kept.load(KEY, h.partition_id, context, message, server_round)


def _save(h, context, message, server_round: int, state: dict) -> None:
    kept.save(KEY, h.partition_id, context, message, server_round, state)


def restore(h, model: nn.Module, context, message, server_round: int) -> None:
    """Before training (fedper, fedrep, fedbn): the hospital's own part into the global model."""
    own = _state(h, context, message, server_round)
    if own:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in own.items()}, strict=False)


def keep(h, model: nn.Module, context, message, server_round: int) -> None:
    """After training: the part that stays, kept for the next round."""
    keys = local_keys(model, method(h))
    state = model.state_dict()
    _save(h, context, message, server_round, {k: state[k].detach().cpu().numpy().copy() for k in keys})


def train_fedrep(h, model: nn.Module, X, y, seed: int, objective, schedule: dict) -> tuple[float, int]:
    """FedRep's round: the head alone for personalize.epochs, then the body alone for train.epochs."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.") and p.requires_grad]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.") and p.requires_grad]
    stats: dict = {}
    for p in body:
        p.requires_grad_(False)
    train_epochs(model, X, y, h.job.train, h.job.federated.personalize.epochs, seed=seed + 1, objective=objective)
    for p in body:
        p.requires_grad_(True)
    for p in head:
        p.requires_grad_(False)
    loss = train_epochs(model, X, y, h.job.train, h.job.train.epochs, seed=seed, objective=objective, stats=stats,
                        **schedule)
    for p in head:
        p.requires_grad_(True)
    return loss, stats.get("steps", 0)


def train_ditto(h, global_model: nn.Module, X, y, context, message, server_round: int, seed: int, objective,
                schedule: dict) -> None:
    """Ditto's personal step this round: v (or, the first time, the global model) trained
    train.epochs epochs on the hospital's rows, pulled towards the global weights it was sent."""
    spec = h.job.federated.personalize
    personal = copy.deepcopy(global_model)
    own = _state(h, context, message, server_round)
    if own:
        personal.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in own.items()})
    anchor = [p.detach() for p in global_model.parameters() if p.requires_grad]
    # its own seed (also the dropout masks'), so a resumed run draws the same batches
    train_epochs(personal, X, y, h.job.train, h.job.train.epochs, seed=seed + 7_919, objective=objective,
                 proximal_mu=spec.lam, proximal_to=anchor, **schedule)
    _save(h, context, message, server_round, {k: v.detach().cpu().numpy().copy()
                                              for k, v in personal.state_dict().items()})


def personal_model(h, global_model: nn.Module, context, message, server_round: int) -> nn.Module | None:
    """The hospital's personal model as of `server_round` (stateful methods), or None before it has one."""
    own = _state(h, context, message, server_round + 1)
    if own is None:
        return None
    model = copy.deepcopy(global_model)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in own.items()}, strict=method(h) == "ditto")
    return model


def finetune(h, model: torch.nn.Module, objective) -> None:
    """Train `model` (the final global one) personalize.epochs more epochs on `h`'s training rows,
    at a constant learning rate (train.optimizer.lr unless personalize.lr)."""
    spec = h.job.federated.personalize
    X, y, _, _ = h.tensors(standardizer(model).mean.numpy())
    train = h.job.train
    lr = spec.lr if spec.lr is not None else train.optimizer.lr
    train = train.model_copy(update={"optimizer": train.optimizer.model_copy(update={"lr": lr}),
                                     "schedule": train.schedule.model_copy(update={"name": "constant",
                                                                                    "warmup_epochs": 0})})
    train_mode(model)
    if len(y):
        train_epochs(model, X, y, train, spec.epochs, seed=h.job.seed * 100_003 + 7_919 + h.partition_id,
                     objective=objective)
