"""Variational autoencoder (Kingma & Welling 2014) on 8x8 digits.

Encoder q(z|x) = N(mu, diag(sigma^2)); decoder p(x|z) = Bernoulli(logits) per pixel on intensities
in [0, 1] (the usual choice for digit images; a soft target, so it bounds but is not the exact
likelihood of grey levels). The reparameterisation trick z = mu + sigma * eps makes the sample
differentiable. Loss = negative ELBO = reconstruction + beta * KL(q(z|x) || N(0, I)), in nats per
image; beta = 1 is the true ELBO, beta != 1 the beta-VAE trade-off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.models.base import FamilyModule


class VAE(nn.Module):
    def __init__(self, input_dim: int = 64, hidden_dims=(256, 128), latent_dim: int = 8):
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        enc, d = [], input_dim
        for h in hidden_dims:
            enc += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.encoder = nn.Sequential(*enc)
        self.to_mu, self.to_logvar = nn.Linear(d, latent_dim), nn.Linear(d, latent_dim)
        dec, d = [], latent_dim
        for h in reversed(hidden_dims):
            dec += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.decoder = nn.Sequential(*dec, nn.Linear(d, input_dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))
        return self.to_mu(h), self.to_logvar(h).clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> pixel logits (batch, input_dim)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (decoder at the posterior mean), as pixel probabilities."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu)).view_as(x)

    def elbo_terms(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image reconstruction NLL and KL (nats), with one reparameterised sample of z."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        logits = self.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(dim=1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
        return recon, kl


class VAEModule(FamilyModule):
    def __init__(self, net: VAE, optimizer, scheduler=None, beta: float = 1.0):
        super().__init__(net, optimizer, scheduler)
        self.beta = beta

    def step(self, batch, split: str) -> torch.Tensor:
        x, _ = batch
        recon, kl = self.net.elbo_terms(x)
        loss = (recon + self.beta * kl).mean()
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=split == "val", sync_dist=True)
        self.log(f"{split}/neg_elbo", (recon + kl).mean(), on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}/recon", recon.mean(), on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}/kl", kl.mean(), on_step=False, on_epoch=True, sync_dist=True)
        return loss
