"""A conditional GAN for tabular rows (`model.name: gan`): the generator/discriminator pair of the
primers, conditioned on the label. Rows live in the consortium's standardized space (the input
scaling agreed from the hospitals' sums); the generator maps noise + a one-hot label to a row, the
discriminator tells a (row, label) pair real from generated. Both are one module, so FedAvg
averages both; a hospital trains them on its own rows only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _mlp(width_in: int, hidden: list[int], width_out: int, activation: str, leaky: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width_in, h), nn.LeakyReLU(0.2) if leaky else ACT[activation]()]
        width_in = h
    return nn.Sequential(*layers, nn.Linear(width_in, width_out))


class TabularGAN(nn.Module):
    def __init__(self, standardize: nn.Module, num_features: int, num_classes: int, hidden: list[int],
                 latent_dim: int, activation: str = "relu"):
        super().__init__()
        self.input = standardize                      # the consortium's scaling (census), not trained
        self.num_features, self.num_classes, self.latent_dim = num_features, num_classes, latent_dim
        self.generator = _mlp(latent_dim + num_classes, hidden, num_features, activation, leaky=False)
        self.discriminator = _mlp(num_features + num_classes, hidden, 1, activation, leaky=True)
        self.register_buffer("prior", torch.full((num_classes,), 1.0 / num_classes))  # label shares, census

    def generate(self, labels: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Rows in standardized space for these labels."""
        z = torch.randn(len(labels), self.latent_dim, generator=gen)
        return self.generator(torch.cat([z, F.one_hot(labels, self.num_classes).float()], 1))

    def critic(self, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.discriminator(torch.cat([rows, F.one_hot(labels, self.num_classes).float()], 1))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit that raw rows `x` are real, under each label (rows x classes)."""
        z = self.input(x)
        return torch.stack([self.critic(z, torch.full((len(x),), c, dtype=torch.long))
                            for c in range(self.num_classes)], 1)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` raw rows (the consortium's units) and their labels, drawn with the label shares."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.multinomial(self.prior.float(), n, replacement=True, generator=gen)
        was = self.training
        self.eval()
        z = self.generate(labels, gen)
        self.train(was)
        rows = z * self.input.scale + self.input.mean
        return rows.numpy().astype(np.float32), labels.numpy()


MOMENT_WEIGHT = 1.0   # the generator's class-conditional moment matching, beside its adversarial loss


def moment_gap(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class present in the batch: squared gaps of the generated rows' mean and std to the real
    rows'. Feature matching on the data's first two moments (Salimans et al., 2016), which keeps a
    small federated GAN from collapsing onto one mode or ignoring its label."""
    gap = fake.new_zeros(())
    for c in range(num_classes):
        mask = labels == c
        if int(mask.sum()) < 2:
            continue
        f, r = fake[mask], real[mask]
        gap = gap + ((f.mean(0) - r.mean(0)) ** 2).mean() + ((f.std(0) - r.std(0)) ** 2).mean()
    return gap


def discriminator_loss(model: TabularGAN, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    real_logit, fake_logit = model.critic(real, labels), model.critic(fake.detach(), labels)
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def generator_loss(model: TabularGAN, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logit = model.critic(fake, labels)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def train_gan(model: TabularGAN, X: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int, epochs: int,
              seed: int) -> tuple[float, float, int]:
    """Local epochs of alternating discriminator and generator steps (Adam, beta1 0.5) on raw rows
    `X`; returns the last epoch's mean discriminator and generator losses, and the steps taken."""
    gen = torch.Generator().manual_seed(seed)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=lr, betas=(0.5, 0.999))
    real_all = model.input(X).detach()
    steps, d_sum, g_sum, seen = 0, 0.0, 0.0, 0
    for _ in range(epochs):
        d_sum, g_sum, seen = 0.0, 0.0, 0
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            real, labels = real_all[idx], y[idx]
            d_loss = discriminator_loss(model, real, model.generate(labels, gen), labels)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward(inputs=list(model.discriminator.parameters()))
            opt_d.step()
            # the generator's step against the discriminator as it is now
            fake = model.generate(labels, gen)
            g_loss = generator_loss(model, fake, labels)
            opt_g.zero_grad(set_to_none=True)
            (g_loss + MOMENT_WEIGHT * moment_gap(fake, real, labels, model.num_classes)).backward(
                inputs=list(model.generator.parameters()))
            opt_g.step()
            d_sum += d_loss.item() * len(idx)
            g_sum += g_loss.item() * len(idx)
            seen, steps = seen + len(idx), steps + 1
    return d_sum / max(seen, 1), g_sum / max(seen, 1), steps


@torch.no_grad()
def evaluate_gan(model: TabularGAN, X: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, float]:
    """Discriminator and generator losses on held-out real rows, with seeded noise."""
    if len(y) == 0:
        return {"d_loss": float("nan"), "g_loss": float("nan"), "loss": float("nan")}
    fake = model.generate(y, torch.Generator().manual_seed(seed))
    d_loss, g_loss = discriminator_loss(model, model.input(X), fake, y), generator_loss(model, fake, y)
    return {"d_loss": float(d_loss), "g_loss": float(g_loss), "loss": float(d_loss)}
