"""Many hospitals' local training as one computation: stacked parameters, `torch.func`.

`train_stacked` runs what `training.train_epochs` runs for one hospital, for K hospitals at once:
their parameters stacked along a leading axis (one tensor per parameter, not one model per
hospital), every step one forward pass for all of them and one backward pass: for the MLP family
(linear and element-wise layers) each layer is one batched matmul over the stacked weights, for the
other families a `vmap` of `functional_call` of the same module. Each hospital
keeps its own rows, its own shuffling (the same seeded `randperm` per epoch as the per-hospital
loop), its own last partial batch and its own number of steps: an epoch's batches are padded to the
longest hospital's, padded rows carry weight 0, and a step with no row of a hospital leaves that
hospital's parameters and optimizer state as they were (FedJAX's ClientBlock, in PyTorch).

The optimizers are torch's own update rules (SGD with momentum/nesterov, Adam, AdamW, RMSprop, with
weight decay, their constants from `core.training`) written over stacked tensors, because torch's
keep one step count per tensor and each hospital here steps its own number of times; FedProx's proximal term, SCAFFOLD's correction and
gradient-norm clipping act per hospital, as in `train_epoch`. Random layers (dropout) draw
different masks per hospital (`randomness="different"`), from torch's global generator seeded
with the first hospital's seed: the same distribution as the per-hospital loop, not the same masks. Batch norm is not supported (a step's
running statistics are state a functional call does not return); validation refuses it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from orchestrator.core.models import Destandardize, Net, Standardize
from orchestrator.core.training import ADAM_BETAS, ADAM_EPS, RMSPROP_ALPHA, RMSPROP_EPS, Objective, lr_factor
from orchestrator.spec.train import OptimizerSpec, TrainSpec

Stacked = dict[str, torch.Tensor]   # parameter name -> (K, *shape)


@dataclass
class Block:
    """The rows of K hospitals, concatenated: hospital k's rows are X[offsets[k]:offsets[k]+sizes[k]]."""

    X: torch.Tensor
    y: torch.Tensor
    sizes: list[int]

    @classmethod
    def of(cls, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> Block:
        return cls(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]), [len(y) for _, y in parts])

    @property
    def offsets(self) -> list[int]:
        out, at = [], 0
        for n in self.sizes:
            out.append(at)
            at += n
        return out


@dataclass
class Result:
    params: Stacked           # trained trainable parameters, (K, *shape)
    losses: list[float]       # mean task loss of each hospital's last epoch (as train_epochs returns)
    steps: list[int]          # optimizer steps each hospital took
    lr_sums: list[float]      # the learning rates of those steps, summed (SCAFFOLD)


def _epoch_batches(block: Block, batch_size: int, gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, mask), each (steps, K, batch_size): hospital k's shuffled batches of this epoch,
    padded with its first row (mask 0) to the most batches any hospital has."""
    steps = max((math.ceil(n / batch_size) for n in block.sizes), default=0)
    idx = torch.zeros(len(block.sizes), steps * batch_size, dtype=torch.long)
    mask = torch.zeros(len(block.sizes), steps * batch_size, dtype=torch.bool)
    for k, (n, at, gen) in enumerate(zip(block.sizes, block.offsets, gens)):
        perm = torch.randperm(n, generator=gen)  # drawn as train_epochs draws it, also for n = 0
        idx[k, :n], idx[k, n:] = perm + at, at if n else 0
        mask[k, :n] = True
    shape = (len(block.sizes), steps, batch_size)
    return idx.reshape(shape).transpose(0, 1), mask.reshape(shape).transpose(0, 1)


def _expand(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.unsqueeze(0).expand(k, *t.shape).clone()


def _per_hospital(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (K,) vector shaped to broadcast against a stacked (K, ...) tensor."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Dropout, nn.Identity)


def _batchable(model: nn.Module) -> bool:
    """Whether `_batched_forward` computes `model` exactly: linear layers, element-wise layers and
    the consortium's input/output scaling, in sequence (the mlp and logistic families)."""
    def ok(m: nn.Module) -> bool:
        if isinstance(m, nn.Sequential):
            return all(ok(c) for c in m)
        return type(m) in (nn.Linear, Standardize, Destandardize) or type(m) in _ELEMENTWISE
    return type(model) is Net and all(ok(m) for m in (model.input, model.body, model.head, model.output))


def _batched_forward(m: nn.Module, prefix: str, p: Stacked, x: torch.Tensor) -> torch.Tensor:
    """`m`'s forward for K hospitals at once: x (K, B, in), a stacked parameter (K, ...) per hospital,
    a frozen one (not in `p`) shared. Dropout draws its own mask per row, so per hospital."""
    if isinstance(m, (nn.Sequential, Net)):
        for name, child in m.named_children():   # Net: input, body, head, output, its forward's order
            x = _batched_forward(child, f"{prefix}{name}.", p, x)
        return x
    if isinstance(m, nn.Linear):
        w, b = p.get(prefix + "weight"), p.get(prefix + "bias")
        if w is not None and b is not None:
            return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        out = x @ m.weight.detach().t() if w is None else torch.bmm(x, w.transpose(1, 2))  # frozen: shared
        if m.bias is not None:
            out = out + (b.unsqueeze(1) if b is not None else m.bias.detach())
        return out
    return m(x)   # element-wise, or the fixed scaling buffers broadcast over (K, B, features)


class StackedOptimizer:
    """torch.optim's update rules over stacked parameters; `active` (K,) says which hospitals step."""

    def __init__(self, spec: OptimizerSpec, params: Stacked):
        self.spec = spec
        self.t = torch.zeros(next(iter(params.values())).shape[0]) if params else torch.zeros(0)
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        self.m = zeros if spec.name in ("adam", "adamw", "rmsprop") or spec.momentum else {}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()} if spec.name in ("adam", "adamw", "rmsprop") else {}
        self.buf = {n: torch.zeros_like(p) for n, p in params.items()} if spec.name == "rmsprop" and spec.momentum else {}

    def step(self, params: Stacked, grads: Stacked, lr: float, active: torch.Tensor) -> Stacked:
        s = self.spec
        self.t = self.t + active.float()
        out = {}
        for n, p in params.items():
            g, on = grads[n], _per_hospital(active, params[n])
            if s.weight_decay and s.name != "adamw":
                g = g + s.weight_decay * p
            if s.name == "sgd":
                if s.momentum:
                    buf = torch.where(on, s.momentum * self.m[n] + g, self.m[n])
                    self.m[n] = buf
                    g = g + s.momentum * buf if s.nesterov else buf
                new = p - lr * g
            elif s.name in ("adam", "adamw"):
                (b1, b2), eps = ADAM_BETAS, ADAM_EPS
                base = p * (1 - lr * s.weight_decay) if s.name == "adamw" and s.weight_decay else p
                m = torch.where(on, self.m[n] + (1 - b1) * (g - self.m[n]), self.m[n])
                v = torch.where(on, b2 * self.v[n] + (1 - b2) * g * g, self.v[n])
                self.m[n], self.v[n] = m, v
                t = _per_hospital(self.t.clamp_min(1.0), p)
                step_size = lr / (1 - b1**t)
                denom = v.sqrt() / (1 - b2**t).sqrt() + eps
                new = base - step_size * m / denom
            else:  # rmsprop
                alpha, eps = RMSPROP_ALPHA, RMSPROP_EPS
                sq = torch.where(on, alpha * self.v[n] + (1 - alpha) * g * g, self.v[n])
                self.v[n] = sq
                avg = sq.sqrt() + eps
                if s.momentum:
                    buf = torch.where(on, s.momentum * self.buf[n] + g / avg, self.buf[n])
                    self.buf[n] = buf
                    new = p - lr * buf
                else:
                    new = p - lr * g / avg
            out[n] = torch.where(on, new, p)
        return out


def train_stacked(model: nn.Module, block: Block, spec: TrainSpec, epochs: int, seeds: list[int],
                  objective: Objective, epoch_offset: int = 0, total_epochs: int | None = None,
                  proximal_mu: float = 0.0, correction: Stacked | None = None) -> Result:
    """K hospitals' local epochs from `model`'s weights, together. `seeds[k]` seeds hospital k's
    shuffling as `train_epochs(seed=seeds[k])` does; `correction[name]` (K, *shape) is added to
    hospital k's gradient every step (SCAFFOLD's c - c_i)."""
    K = len(block.sizes)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update({n: b for n, b in model.named_buffers()})
    params = {n: _expand(p, K) for n, p in trainable.items()}
    opt = StackedOptimizer(spec.optimizer, params)
    weights = None if objective.weights is None or objective.regression else torch.as_tensor(objective.weights)
    mu = float(proximal_mu)

    if _batchable(model):   # the MLP family: each layer one batched matmul over the hospitals
        def forward(p: Stacked, xb: torch.Tensor) -> torch.Tensor:
            return _batched_forward(model, "", p, xb)
    else:
        forward = vmap(lambda p, xb: functional_call(model, {**p, **fixed}, (xb,)), randomness="different")

    def losses_fn(p: Stacked, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor):
        """Each hospital's loss (with FedProx's term) and task loss, (K,) each, over its masked rows."""
        out = forward(p, xb)
        k, b = yb.shape
        per = objective.per_example(out.reshape(k * b, -1), yb.reshape(-1)).reshape(k, b)
        w = mb.float() if weights is None else mb.float() * weights[yb]
        task = (per * w).sum(1) / w.sum(1).clamp_min(1e-12)
        if mu > 0:
            return task + 0.5 * mu * sum(((p[n] - trainable[n]) ** 2).reshape(k, -1).sum(1) for n in p), task
        return task, task

    def step_fn(p: Stacked, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> tuple[Stacked, torch.Tensor]:
        """Every hospital's gradient of its own loss: the K losses are independent, so one backward
        pass of their sum through the batched forward gives each its own (half the time of
        vmap(grad(...)), whose transforms nest per step)."""
        leaves = {n: t.detach().requires_grad_() for n, t in p.items()}
        with torch.enable_grad():
            total, task = losses_fn(leaves, xb, yb, mb)
            grads = torch.autograd.grad(total.sum(), list(leaves.values()), allow_unused=True)
        return ({n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(leaves, grads)},
                task.detach())

    gens = [torch.Generator().manual_seed(s) for s in seeds]
    torch.default_generator.manual_seed(seeds[0] if seeds else 0)  # dropout masks (CPU), as train_epochs seeds its own
    total_epochs = total_epochs or epochs
    steps = torch.zeros(K, dtype=torch.long)
    lr_sums = torch.zeros(K, dtype=torch.float64)
    last = torch.zeros(K, dtype=torch.float64)
    model.train()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        for epoch in range(epochs):
            lr = spec.optimizer.lr * lr_factor(spec.schedule, epoch_offset + epoch, total_epochs)
            idx, mask = _epoch_batches(block, spec.batch_size, gens)
            total, seen = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
            for s in range(idx.shape[0]):
                mb = mask[s]
                active = mb.any(1)
                grads, task = step_fn(params, block.X[idx[s]], block.y[idx[s]], mb)
                if spec.grad_clip is not None:
                    norm = torch.sqrt(sum(g.pow(2).reshape(K, -1).sum(1) for g in grads.values()))
                    coef = (spec.grad_clip / (norm + 1e-6)).clamp(max=1.0)
                    grads = {n: g * _per_hospital(coef, g) for n, g in grads.items()}
                if correction is not None:
                    grads = {n: g + correction[n] if n in correction else g for n, g in grads.items()}
                params = opt.step(params, grads, lr, active)
                count = mb.sum(1).double()
                total += task.detach().double() * count
                seen += count
                steps += active.long()
                lr_sums += active.double() * lr
            last = total / seen.clamp_min(1.0)
    return Result(params, last.tolist(), steps.tolist(), lr_sums.tolist())


def scored_stacked(out: torch.Tensor | None, y: torch.Tensor, sizes: list[int], objective: Objective
                   ) -> list[tuple[dict, np.ndarray]]:
    """For each of K hospitals whose rows are concatenated in `y` (hospital k's `sizes[k]` rows, then
    the next's) and scored as `out`: `training.scored` of its own rows and the sums the server
    pools (confusion counts, or regression sums), computed together: one loss, one softmax and one
    confusion count over every row, then the per-hospital rest (AUROC, regression sums)."""
    from orchestrator.core import metrics as M

    K, n = len(sizes), len(y)
    seg = torch.repeat_interleave(torch.arange(K), torch.as_tensor(sizes, dtype=torch.long), output_size=n)
    per = objective.per_example(out, y).double() if n else torch.zeros(0, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    if objective.weights is not None and not objective.regression:
        w = torch.as_tensor(objective.weights, dtype=torch.float64)[y]
    losses = (torch.zeros(K, dtype=torch.float64).index_add_(0, seg, per * w) /
              torch.zeros(K, dtype=torch.float64).index_add_(0, seg, w)).tolist()
    yn, bounds = y.cpu().numpy(), np.cumsum([0, *sizes])
    parts = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    if objective.regression:
        pred = objective.predict(out) if n else np.zeros(0)
        sums = [M.regression_sums(yn[s], pred[s]) for s in parts]
        scores = [M.from_regression_sums(v) for v in sums]
    else:
        probs = objective.probabilities(out) if n else np.zeros((0, objective.num_classes))
        k = probs.shape[1]
        cms = np.bincount(seg.numpy() * k * k + yn * k + probs.argmax(1), minlength=K * k * k).reshape(K, k, k)
        sums = list(cms)
        scores = [{**c, "auroc": M.auroc(yn[s], probs[s])} for c, s in zip(M.from_confusions(cms), parts)]
    return [({"loss": loss, **score, "num_examples": int(size)} if size else {"loss": float("nan"), "num_examples": 0},
             summed) for size, loss, score, summed in zip(sizes, losses, scores, sums)]
