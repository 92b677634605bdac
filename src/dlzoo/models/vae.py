"""Variational autoencoder (Kingma & Welling 2014) on 8x8 digits, with a true likelihood.

The digits have 17 grey levels (0..16; the data module serves level / 16). Encoder q(z|x) = N(mu, diag(sigma^2));
decoder p(x|z) = a categorical over the 17 levels for each pixel, so -log p(x|z) is the likelihood of the
data as it is, in nats per image, comparable with any other model of the same 17-level images. The
reparameterisation z = mu + sigma * eps makes the sample differentiable. Loss = negative ELBO = reconstruction +
beta * KL(q(z|x) || N(0, I)); beta = 1 is the true ELBO. `log_likelihood` is the importance-weighted bound
(Burda et al. 2016), which tightens towards log p(x) as k grows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlzoo.models.base import FamilyModule

LEVELS = 17   # scikit-learn's digits: integer grey levels 0..16


def levels_of(x: torch.Tensor) -> torch.Tensor:
    """Images served as level / 16 -> integer levels (batch, pixels)."""
    return (x.flatten(1) * (LEVELS - 1)).round().long().clamp(0, LEVELS - 1)


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
        self.decoder = nn.Sequential(*dec, nn.Linear(d, input_dim * LEVELS))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))
        return self.to_mu(h), self.to_logvar(h).clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes (..., latent) -> level logits (..., input_dim, 17)."""
        return self.decoder(z).unflatten(-1, (self.input_dim, LEVELS))

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's expected intensity per pixel, in [0, 1] (what a picture of p(x|z) shows)."""
        probs = torch.softmax(self.decode(z), dim=-1)
        return probs @ torch.linspace(0, 1, LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (decoder at the posterior mean), as expected intensities in [0, 1]."""
        mu, _ = self.encode(x)
        return self.mean_image(mu).view_as(x)

    def recon_nll(self, logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over pixels: logits (..., pixels, 17), levels (..., pixels) -> (...)."""
        return -torch.log_softmax(logits, dim=-1).gather(-1, levels.unsqueeze(-1)).squeeze(-1).sum(-1)

    def elbo_terms(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image reconstruction NLL and KL (nats), with one reparameterised sample of z."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        recon = self.recon_nll(self.decode(z), levels_of(x))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
        return recon, kl

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, chunk: int = 250) -> torch.Tensor:
        """The importance-weighted lower bound on log p(x) per image with k samples from q(z|x) (nats)."""
        mu, logvar = self.encode(x)
        std, levels = torch.exp(0.5 * logvar), levels_of(x)
        log_w = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            eps = torch.randn((n, *mu.shape), generator=generator)
            z = mu + std * eps                                                  # (n, batch, latent)
            log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_w.append(-self.recon_nll(self.decode(z), levels.expand(n, *levels.shape)) + log_prior - log_q)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)


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
