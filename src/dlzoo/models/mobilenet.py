"""MobileNet (v1-style): every 3x3 convolution after the stem is depthwise-separable.

A 3x3 conv from C_in to C_out costs H*W*C_in*C_out*9 multiply-accumulates; a depthwise 3x3 (one
filter per channel) followed by a pointwise 1x1 costs H*W*C_in*(9 + C_out), i.e. 1/C_out + 1/9 of
it. The width multiplier scales every layer's channels (Howard et al. 2017).
"""

from __future__ import annotations

from torch import nn

from dlzoo.models.cnn import conv_norm_relu


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__(
            conv_norm_relu(c_in, c_in, stride, norm, kernel=3, groups=c_in),  # depthwise: spatial, per channel
            conv_norm_relu(c_in, c_out, 1, norm, kernel=1),  # pointwise: mixes channels
        )


class MobileNet(nn.Module):
    def __init__(self, channels=(32, 64, 64, 128, 128), strides=(1, 1, 2, 1, 2), width_multiplier: float = 1.0,
                 norm: str = "batch", in_channels: int = 1, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        widths = [max(8, int(round(c * width_multiplier))) for c in channels]
        # The stem stays a full conv: a depthwise conv on 1 input channel would learn one filter.
        layers = [conv_norm_relu(in_channels, widths[0], strides[0], norm)]
        for c_in, c_out, stride in zip(widths, widths[1:], strides[1:]):
            layers.append(DepthwiseSeparable(c_in, c_out, stride, norm))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.head(self.features(x))
