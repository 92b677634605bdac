"""A WaveNet-style classifier of spoken digits: a fixed log-mel front end, then stacks of dilated
convolutions with gated units, residual and skip connections (as in dlzoo/models/wavenet.py), then mean and
max pooling over time and a linear layer to the 10 digits.

    waveform (B, 1, T) -> |STFT|^2 -> mel filterbank -> log -> BatchNorm over mel bands
        -> 1x1 conv -> [dilated conv (k=3, dilation d, same padding) -> tanh * sigmoid -> 1x1
                        -> residual (+ input) and skip] x layers
        -> sum of skips -> ReLU -> [mean over time ; max over time] -> linear -> 10 logits

Why a log-mel front end and not raw samples: every published FSDD anchor (~98%) is feature-based, and
the issue's budget (all speech stages in 12 minutes on 2 cores, with nine classifier fits for its seeds and
speaker folds) leaves ~30 s per fit; a raw-waveform stem at 8 kHz costs the dilated stack 64x more positions.
The front end is part of the network (buffers, no parameters), so the classifier takes waveforms, the same
input the generator writes. Unlike the generator, the convolutions are not causal: a classifier hears the
whole clip. The mel filterbank is librosa's, computed once at construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlzoo.errors import ConfigError


def log_mel(wave: Tensor, window: Tensor, mel: Tensor, n_fft: int, hop: int) -> Tensor:
    spec = torch.stft(wave[:, 0], n_fft, hop, window=window, center=True, return_complex=True)
    return torch.log(mel @ spec.abs().pow(2) + 1e-6)


# One opaque call in FX graphs: graph-mode int8 quantisation (the compress stage) then leaves the front end in
# float. The power spectrum spans many decades, which one int8 grid cannot hold: quantised, it wrecks the
# classifier's accuracy, while the convolutions after it quantise well.
torch.fx.wrap("log_mel")


class LogMel(nn.Module):
    """(B, 1, T) waveform -> (B, n_mels, frames) log-mel energies; no trainable parameters."""

    def __init__(self, n_fft: int = 256, hop: int = 64, n_mels: int = 40, sample_rate: int = 8000):
        super().__init__()
        import librosa

        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)  # (n_mels, n_fft // 2 + 1)
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        return log_mel(wave, self.window, self.mel, self.n_fft, self.hop)


class GatedBlock(nn.Module):
    def __init__(self, channels: int, skip: int, kernel_size: int, dilation: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.out = nn.Conv1d(channels, channels + skip, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        filt, gate = self.conv(x).chunk(2, dim=1)
        res, skip = self.out(torch.tanh(filt) * torch.sigmoid(gate)).split([self.channels, self.out.out_channels - self.channels], dim=1)
        return x + res, skip


class WaveNetClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, sample_rate: int = 8000, n_mels: int = 40, n_fft: int = 256, hop: int = 64, channels: int = 64,
                 skip_channels: int = 64, kernel_size: int = 3, layers_per_stack: int = 5, stacks: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"model.net.kernel_size must be odd (same padding), got {kernel_size}")
        self.frontend = LogMel(n_fft, hop, n_mels, sample_rate)
        self.norm = nn.BatchNorm1d(n_mels)
        self.inp = nn.Conv1d(n_mels, channels, 1)
        self.dilations = [2**i for i in range(layers_per_stack)] * stacks
        self.blocks = nn.ModuleList(GatedBlock(channels, skip_channels, kernel_size, d) for d in self.dilations)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * skip_channels, num_classes)
        # frames each pooled feature sees: 1 + (k - 1) * sum(dilations), each frame `hop` samples apart
        self.receptive_field_frames = 1 + (kernel_size - 1) * sum(self.dilations)

    def forward(self, wave: Tensor) -> Tensor:
        feats = self.frontend(wave)
        x = self.inp(self.norm(feats - feats.mean(dim=-1, keepdim=True)))
        skips = 0
        for block in self.blocks:
            x, skip = block(x)
            skips = skips + skip
        h = F.relu(skips)
        return self.head(self.dropout(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)))
