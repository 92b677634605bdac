"""WaveNet (van den Oord et al. 2016) on 8 kHz mu-law speech, with global conditioning on the digit and
the speaker, and fast generation with cached dilated-convolution queues (Paine et al. 2016).

The network predicts code c_t from c_<t: its input at position t is c_{t-1} (the data module shifts the
codes by one), and every convolution is causal, so output t sees inputs t-RF+1..t only, where the
receptive field RF = 1 + (k - 1) * sum(dilations).

    codes -> embedding + level -> [dilated causal conv (k taps, dilation d) + condition
                           -> tanh(filter) * sigmoid(gate) -> 1x1 -> residual (+ input) and skip] x layers
          -> sum of skips -> ReLU -> 1x1 -> ReLU -> 1x1 -> 256 logits

Generation: naive recomputes the whole receptive field for every new sample (`generate(..., naive=True)`);
fast keeps, per layer, a queue of the (k - 1) * d past inputs that its taps read, so one sample costs one
matrix-vector product per tap and layer. Both sample by inverse CDF from the same uniforms, so with equal
logits they draw the same samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlzoo.errors import ConfigError
from dlzoo.models.base import FamilyModule

IGNORE = -1  # target of a padded position (the data module marks the samples after a recording's end)


class ResidualLayer(nn.Module):
    def __init__(self, residual: int, gate: int, skip: int, kernel_size: int, dilation: int, cond_dim: int):
        super().__init__()
        self.kernel_size, self.dilation, self.residual = kernel_size, dilation, residual
        self.conv = nn.Conv1d(residual, 2 * gate, kernel_size, dilation=dilation)  # filter and gate halves
        self.cond = nn.Linear(cond_dim, 2 * gate, bias=False)
        self.out = nn.Conv1d(gate, residual + skip, 1)  # residual and skip outputs in one 1x1

    def gated(self, z: Tensor) -> Tensor:
        filt, gate = z.chunk(2, dim=1)
        return torch.tanh(filt) * torch.sigmoid(gate)

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, R, T), g (B, cond_dim) -> (next residual (B, R, T), skip (B, S, T))."""
        z = self.conv(F.pad(x, ((self.kernel_size - 1) * self.dilation, 0))) + self.cond(g)[:, :, None]
        res, skip = self.out(self.gated(z)).split([self.residual, self.out.out_channels - self.residual], dim=1)
        return x + res, skip

    def step(self, x: Tensor, cond: Tensor, queue: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """One time step from cached inputs: x (B, R) is this layer's input at time t, `queue` (B, R, (k-1)d)
        holds its inputs at t-(k-1)d..t-1 in slots `time % len`; the oldest is overwritten by x."""
        k, d, size = self.kernel_size, self.dilation, queue.shape[-1]
        w = self.conv.weight  # (2G, R, k): tap j reads the input at t - (k-1-j) d
        z = torch.addmm(self.conv.bias + cond, x, w[:, :, k - 1].T)
        for j in range(k - 1):
            z = z + queue[:, :, (t - (k - 1 - j) * d) % size] @ w[:, :, j].T
        queue[:, :, t % size] = x
        res, skip = self.out(self.gated(z)[:, :, None])[:, :, 0].split([self.residual, self.out.out_channels - self.residual], dim=1)
        return x + res, skip


class WaveNet(nn.Module):
    def __init__(self, n_classes: int = 256, residual_channels: int = 32, gate_channels: int = 32, skip_channels: int = 64,
                 kernel_size: int = 2, layers_per_stack: int = 10, stacks: int = 1, n_digits: int = 10,
                 n_speakers: int = 6, cond_dim: int = 16):
        super().__init__()
        self.n_classes, self.n_speakers, self.kernel_size = n_classes, n_speakers, kernel_size
        self.dilations = [2**i for i in range(layers_per_stack)] * stacks
        # A code enters as a learned vector plus its level on the companded scale: nearby codes start out
        # nearby, which an embedding alone has to learn for each of the 256 levels separately.
        self.embed = nn.Embedding(n_classes, residual_channels)
        self.level = nn.Linear(1, residual_channels, bias=False)
        self.digit_embed, self.speaker_embed = nn.Embedding(n_digits, cond_dim), nn.Embedding(n_speakers, cond_dim)
        self.layers = nn.ModuleList(ResidualLayer(residual_channels, gate_channels, skip_channels, kernel_size, d, 2 * cond_dim)
                                    for d in self.dilations)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(),
                                  nn.Conv1d(skip_channels, n_classes, 1))

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def condition(self, digit: Tensor, speaker: Tensor) -> Tensor:
        return torch.cat([self.digit_embed(digit), self.speaker_embed(speaker)], dim=1)

    def inputs(self, codes: Tensor) -> Tensor:
        """Codes (...) -> input vectors (..., R)."""
        level = 2 * codes.unsqueeze(-1).float() / (self.n_classes - 1) - 1
        return self.embed(codes) + self.level(level)

    def stack(self, h: Tensor, g: Tensor) -> Tensor:
        """Embedded inputs h (B, R, T) and condition g -> logits (B, n_classes, T)."""
        skips = 0
        for layer in self.layers:
            h, skip = layer(h, g)
            skips = skips + skip
        return self.head(skips)

    def logits(self, codes: Tensor, digit: Tensor, speaker: Tensor) -> Tensor:
        """Input codes (B, T) (c_-1 .. c_T-2) -> logits (B, n_classes, T) of c_0 .. c_T-1."""
        return self.stack(self.inputs(codes).transpose(1, 2), self.condition(digit, speaker))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 2 + T) = [digit, speaker, input codes]: one tensor, as the data module serves it."""
        return self.logits(x[:, 2:], x[:, 0], x[:, 1])

    @torch.no_grad()
    def generate(self, digit: Tensor, speaker: Tensor, uniforms: Tensor, start_code: int, prefix: Tensor | None = None,
                 naive: bool = False, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Continue `prefix` (B, P) (default: nothing) by `uniforms.shape[1]` sampled codes; returns the new
        codes (B, N) and their logits (B, N, n_classes). `start_code` is the input before the first sample (the
        data's code of silence)."""
        batch, n_new = uniforms.shape
        prefix = prefix if prefix is not None else torch.empty(batch, 0, dtype=torch.long)
        n_prefix = prefix.shape[1]
        seq = torch.cat([torch.full((batch, 1), start_code), prefix, torch.zeros(batch, n_new, dtype=torch.long)], dim=1)
        g = self.condition(digit, speaker)
        step = self._naive_steps(seq, g) if naive else self._fast_steps(seq, g)
        logits = []
        for t in range(seq.shape[1] - 1):  # seq[:, t] is the input that predicts seq[:, t + 1]
            out = step(t)
            if t >= n_prefix:  # a new sample: inverse CDF of the softmax at this step's uniform
                cdf = torch.softmax(out / temperature, dim=1).cumsum(dim=1)
                u = uniforms[:, t - n_prefix, None].contiguous()
                seq[:, t + 1] = torch.searchsorted(cdf, u)[:, 0].clamp_max(self.n_classes - 1)
                logits.append(out)
        return seq[:, 1 + n_prefix :], torch.stack(logits, dim=1)

    def _naive_steps(self, seq: Tensor, g: Tensor):
        """Logits at step t recomputed over the whole receptive field (fewer inputs near the start: the padding)."""
        def run(t: int) -> Tensor:
            window = seq[:, max(0, t + 1 - self.receptive_field) : t + 1]
            return self.stack(self.inputs(window).transpose(1, 2), g)[:, :, -1]

        return run

    def _fast_steps(self, seq: Tensor, g: Tensor):
        """Logits at step t from each layer's queue of past inputs (zeros before the start, as the convolutions' padding)."""
        conds = [layer.cond(g) for layer in self.layers]
        queues = [torch.zeros(seq.shape[0], layer.residual, (self.kernel_size - 1) * layer.dilation) for layer in self.layers]

        def run(t: int) -> Tensor:
            h, skips = self.inputs(seq[:, t]), 0
            for layer, cond, queue in zip(self.layers, conds, queues):
                h, skip = layer.step(h, cond, queue, t)
                skips = skips + skip
            return self.head(skips[:, :, None])[:, :, 0]

        return run


class WaveNetModule(FamilyModule):
    """Cross-entropy over the 256 mu-law levels, in nats per sample (`/bits` the same in bits), padding ignored."""

    def __init__(self, net: WaveNet, optimizer, scheduler=None, scheduler_interval: str = "epoch"):
        super().__init__(net, optimizer, scheduler, scheduler_interval)

    def on_fit_start(self) -> None:
        speakers = getattr(self.trainer.datamodule, "speakers", None)
        if speakers is not None and len(speakers) != self.net.n_speakers:
            raise ConfigError(f"model.net.n_speakers={self.net.n_speakers} but the prepared data has {len(speakers)} speakers")
        if self.logger is not None:
            self.logger.log_metrics({"receptive_field": self.net.receptive_field}, step=0)
        print(f"receptive field {self.net.receptive_field} samples, {len(self.net.dilations)} layers", flush=True)

    def step(self, batch, split: str) -> Tensor:
        x, target = batch
        loss = F.cross_entropy(self.net(x), target, ignore_index=IGNORE)
        n = int((target != IGNORE).sum())  # epoch means weighted by real samples, not by batches
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=n, sync_dist=True)
        self.log(f"{split}/bits", loss / math.log(2), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss
