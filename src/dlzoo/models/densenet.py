"""DenseNet-BC: inside a dense block every layer receives the concatenation of all earlier
feature maps and adds `growth_rate` new ones; transition layers (1x1 conv with `compression`,
2x2 average pool) shrink channels and resolution between blocks (Huang et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from dlzoo.models.norm import make_norm


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth_rate: int, norm: str, bottleneck: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            make_norm(norm, c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, bottleneck * growth_rate, 1, bias=False),
            make_norm(norm, bottleneck * growth_rate), nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck * growth_rate, growth_rate, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


def transition(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(make_norm(norm, c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, growth_rate: int = 12, block_layers=(4, 4, 4), compression: float = 0.5, norm: str = "batch",
                 in_channels: int = 1, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        c = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
        for i, n_layers in enumerate(block_layers):
            for _ in range(n_layers):
                layers.append(DenseLayer(c, growth_rate, norm))
                c += growth_rate
            if i < len(block_layers) - 1:
                c_out = int(c * compression)
                layers.append(transition(c, c_out, norm))
                c = c_out
        layers += [make_norm(norm, c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
