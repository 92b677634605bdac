"""VAE metrics on held-out digits, on the likelihood of the data as it is (17 grey levels per pixel): the negative
ELBO and its two parts, the importance-weighted bound on -log p(x) (nats per image and bits per pixel), two
baselines on the same likelihood fitted on the training split, reconstructions, prior samples and a 2-D map of the
latent space."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dlzoo.evaluation.plots import plot_image_grid, plot_latent_map
from dlzoo.models.vae import LEVELS, levels_of


def _split_levels(datamodule, split: str) -> np.ndarray:
    return levels_of(datamodule.datasets[split].tensors[0]).numpy()


def independent_nll(train: np.ndarray, test: np.ndarray, alpha: float = 1.0) -> float:
    """One categorical per pixel (add-alpha counts): -log p(x) per test image, nats."""
    counts = np.stack([np.bincount(train[:, p], minlength=LEVELS) for p in range(train.shape[1])]) + alpha
    log_theta = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-log_theta[np.arange(test.shape[1]), test].sum(axis=1).mean())


def mixture_fit(train: np.ndarray, components: int, iterations: int = 200, alpha: float = 1.0, seed: int = 0):
    """A mixture of per-pixel categoricals by EM (add-alpha pseudo-counts: MAP, so no level gets probability 0);
    returns (log weights (K,), log theta (K, pixels, 17))."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(LEVELS)[train]                                   # (N, pixels, 17)
    resp = rng.dirichlet(np.ones(components), size=len(train))       # a random soft start
    for _ in range(iterations):
        counts = np.einsum("nk,npl->kpl", resp, onehot) + alpha
        log_theta = np.log(counts / counts.sum(axis=2, keepdims=True))
        log_pi = np.log((resp.sum(axis=0) + 1.0) / (len(train) + components))
        joint = np.einsum("npl,kpl->nk", onehot, log_theta) + log_pi
        resp = np.exp(joint - joint.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
    return log_pi, log_theta


def mixture_nll(model, test: np.ndarray) -> float:
    log_pi, log_theta = model
    joint = np.einsum("npl,kpl->nk", np.eye(LEVELS)[test], log_theta) + log_pi
    top = joint.max(axis=1, keepdims=True)
    return float(-(top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).mean())


def baselines(datamodule, components=(10, 20, 50), seed: int = 0) -> dict:
    """The two baselines: independent pixels, and the mixture whose size the validation split chooses."""
    train, val, test = (_split_levels(datamodule, s) for s in ("train", "val", "test"))
    fits = {k: mixture_fit(train, k, seed=seed) for k in components}
    chosen = min(fits, key=lambda k: mixture_nll(fits[k], val))
    return {"baseline/independent_nll": independent_nll(train, test), "baseline/mixture_nll": mixture_nll(fits[chosen], test),
            "baseline/mixture_components": float(chosen)}


@torch.no_grad()
def evaluate(module, datamodule, out_dir: str | Path, n_samples: int = 10, iwae_samples: int = 1000,
             mixture_components=(10, 20, 50), seed: int = 0) -> tuple[dict, list[Path]]:
    datamodule.setup("fit")
    datamodule.setup("test")
    module.eval()
    vae = module.net
    generator = torch.Generator().manual_seed(seed)  # fixed noise: the same checkpoint gives the same numbers
    recon_sum = kl_sum = iwae_sum = 0.0
    xs, ys, mus = [], [], []
    for x, y in datamodule.test_dataloader():
        for _ in range(n_samples):  # average the single-sample ELBO estimate over several draws of z
            mu, logvar = vae.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
            recon_sum += vae.recon_nll(vae.decode(z), levels_of(x)).sum().item() / n_samples
            kl_sum += (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum().item() / n_samples
        iwae_sum += -vae.log_likelihood(x, iwae_samples, generator).sum().item()
        xs.append(x)
        ys.append(y)
        mus.append(vae.encode(x)[0])
    x, y, mu = torch.cat(xs), torch.cat(ys), torch.cat(mus)
    n, pixels = len(x), vae.input_dim
    bits = 1 / (pixels * math.log(2))   # nats per image -> bits per pixel
    metrics = {
        "test/neg_elbo": (recon_sum + kl_sum) / n,
        "test/recon": recon_sum / n,
        "test/kl": kl_sum / n,
        "test/nll_iwae": iwae_sum / n,
        "test/iwae_samples": iwae_samples,
        "test/num_examples": n,
        "latent_dim": vae.latent_dim,
    }
    metrics.update(baselines(datamodule, tuple(mixture_components), seed))
    for key in ("test/neg_elbo", "test/nll_iwae", "baseline/independent_nll", "baseline/mixture_nll"):
        metrics[f"{key}_bits_per_pixel"] = metrics[key] * bits
    metrics["test/nats_below_mixture"] = metrics["baseline/mixture_nll"] - metrics["test/nll_iwae"]
    out_dir = Path(out_dir)
    shape = x.shape[-2:]
    originals = x[:16, 0].numpy()
    recons = vae(x[:16])[:, 0].numpy()
    files = [plot_image_grid(np.concatenate([originals, recons]), ["input"] * 16 + ["reconstruction"] * 16,
                             out_dir / "reconstructions.png")]
    z = torch.randn(32, vae.latent_dim, generator=generator)
    samples = vae.mean_image(z).view(-1, *shape).numpy()
    files.append(plot_image_grid(samples, ["prior sample (mean)"] * 32, out_dir / "prior_samples.png"))
    files.append(plot_latent_map(mu.numpy(), y.numpy(), out_dir / "latent_map.png"))
    return metrics, files
