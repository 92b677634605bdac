"""VAE metrics on held-out digits: negative ELBO (nats per image) and its two parts, plus
reconstructions, samples from the prior and a 2-D map of the latent space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlzoo.evaluation.plots import plot_image_grid, plot_latent_map


@torch.no_grad()
def evaluate(module, datamodule, out_dir: str | Path, n_samples: int = 10, seed: int = 0) -> tuple[dict, list[Path]]:
    datamodule.setup("test")
    module.eval()
    vae = module.net
    generator = torch.Generator().manual_seed(seed)  # fixed noise: the same checkpoint gives the same numbers
    recon_sum = kl_sum = 0.0
    xs, ys, mus = [], [], []
    for x, y in datamodule.test_dataloader():
        for _ in range(n_samples):  # average the single-sample ELBO estimate over several draws of z
            mu, logvar = vae.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
            logits = vae.decode(z)
            recon_sum += torch.nn.functional.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum").item() / n_samples
            kl_sum += (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum().item() / n_samples
        xs.append(x)
        ys.append(y)
        mus.append(vae.encode(x)[0])
    x, y, mu = torch.cat(xs), torch.cat(ys), torch.cat(mus)
    n = len(x)
    metrics = {
        "test/neg_elbo": (recon_sum + kl_sum) / n,
        "test/recon": recon_sum / n,
        "test/kl": kl_sum / n,
        "test/num_examples": n,
        "latent_dim": vae.latent_dim,
    }
    out_dir = Path(out_dir)
    shape = x.shape[-2:]
    originals = x[:16, 0].numpy()
    recons = vae(x[:16])[:, 0].numpy()
    files = [plot_image_grid(np.concatenate([originals, recons]), ["input"] * 16 + ["reconstruction"] * 16,
                             out_dir / "reconstructions.png")]
    z = torch.randn(32, vae.latent_dim, generator=generator)
    samples = torch.sigmoid(vae.decode(z)).view(-1, *shape).numpy()
    files.append(plot_image_grid(samples, ["prior sample"] * 32, out_dir / "prior_samples.png"))
    files.append(plot_latent_map(mu.numpy(), y.numpy(), out_dir / "latent_map.png"))
    return metrics, files
