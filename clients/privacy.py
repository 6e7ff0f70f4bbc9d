"""Local differential privacy: DP-SGD on a hospital's own rows (Opacus), with an RDP accountant.

Every step samples rows with probability q = batch_size / rows (Poisson), clips each row's gradient
to `clipping_norm` and adds Gaussian noise of std noise_multiplier * clipping_norm. A round runs
`epochs * ceil(rows / batch_size)` such steps, the same in every round, so the epsilon spent after
round r follows from (noise, q, steps * r) alone: a resumed run accounts exactly like an
uninterrupted one, and the orchestrator can project the whole run's epsilon before it starts.
"""
from __future__ import annotations

import math

import torch


def steps_per_round(rows: int, batch_size: int, epochs: int) -> int:
    return epochs * max(1, math.ceil(rows / batch_size))


def epsilon(noise_multiplier: float, rows: int, batch_size: int, epochs: int, rounds: int, delta: float) -> float:
    """Epsilon a hospital with `rows` training rows has spent after `rounds` rounds of local DP-SGD."""
    from opacus.accountants import RDPAccountant

    if rounds <= 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, min(1.0, batch_size / max(rows, 1)),
                    steps_per_round(rows, batch_size, epochs) * rounds)]
    return float(acc.get_epsilon(delta))


def dp_sgd(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, job, seed: int, objective,
           epoch_offset: int, total_epochs: int) -> tuple[float, int]:
    """Train `model` in place with DP-SGD; returns (mean loss of the last epoch, optimizer steps)."""
    import warnings

    spec, dp = job.train, job.federated.dp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure_mode advice, backward-hook notices
        return _train(model, X, y, spec, dp, seed, objective, epoch_offset, total_epochs)


def _train(model, X, y, spec, dp, seed, objective, epoch_offset, total_epochs) -> tuple[float, int]:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from orchestrator.core.models import train_mode
    from orchestrator.core.training import lr_factor, make_optimizer, set_lr

    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(X, y), batch_size=spec.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], spec.optimizer)
    engine = PrivacyEngine(accountant="rdp")
    private, opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.clipping_norm, poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1))
    steps, last = 0, float("nan")
    for epoch in range(spec.epochs):
        set_lr(opt, spec.optimizer.lr, lr_factor(spec.schedule, epoch_offset + epoch, total_epochs))
        train_mode(private)
        total, seen = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:
                continue  # Poisson sampling can draw an empty batch
            opt.zero_grad(set_to_none=True)
            loss = objective(private(xb), yb)
            loss.backward()
            opt.step()
            total, seen, steps = total + float(loss.detach()) * len(yb), seen + len(yb), steps + 1
        last = total / max(seen, 1)
    return last, steps
