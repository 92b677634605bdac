"""Normalisation layers selectable by name, so the same backbone can be compared with each.

For conv features (N, C, H, W):
- batch:    statistics over (N, H, W) per channel; depends on the batch, running stats at eval.
- layer:    over (C, H, W) per sample = GroupNorm with one group (LayerNorm on conv maps).
- instance: over (H, W) per sample and channel (InstanceNorm2d with learnable affine).
- group:    over channel groups per sample (GroupNorm, `groups` groups, Wu & He 2018).
"""

from __future__ import annotations

from torch import nn

from dlzoo.errors import ConfigError

NORMS = ("batch", "layer", "instance", "group", "none")


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
