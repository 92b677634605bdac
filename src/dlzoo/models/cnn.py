"""Plain CNN: a stack of 3x3 convolutions, each followed by a normalisation layer and ReLU.

It is the baseline of the digits families and, with `norm` switched between batch / layer /
instance / group, the backbone of the normalisation comparison. MobileNet (mobilenet.py) has the
same depth, widths and strides with every 3x3 conv made depthwise-separable.
"""

from __future__ import annotations

from torch import nn

from dlzoo.models.norm import make_norm


def conv_norm_relu(c_in: int, c_out: int, stride: int, norm: str, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=norm == "none"),
        make_norm(norm, c_out),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    def __init__(self, channels=(32, 64, 64, 128, 128), strides=(1, 1, 2, 1, 2), norm: str = "batch",
                 in_channels: int = 1, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        layers, c_in = [], in_channels
        for c_out, stride in zip(channels, strides):
            layers.append(conv_norm_relu(c_in, c_out, stride, norm))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
