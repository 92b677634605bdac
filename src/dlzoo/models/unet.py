"""U-Net for semantic segmentation (Ronneberger et al. 2015), small enough to train on a CPU.

Design, top to bottom:

- `UNet`: an encoder of `len(channels)` levels, each two 3x3 conv-norm-ReLU blocks, with a 2x2
  max-pool between levels; a decoder that upsamples (bilinear, to the exact size of the skip, so
  odd input sizes work), concatenates the encoder's features of that level (the skip connection:
  fine spatial detail the pooled path lost) and fuses them with two more conv blocks; a 1x1 conv
  head gives per-pixel class logits (B, num_classes, H, W) at the input resolution.
  `norm` picks the normalisation layer by name (dlzoo.models.norm); `channels_last` keeps the
  feature maps in NHWC layout, in which oneDNN's CPU convolutions (and GPU tensor cores) run
  faster. The deepest level sees a
  receptive field large enough for the whole object, which is what tells a square from a circle;
  the skips put its edges back in place.
- `SegmentationModule`: the LightningModule around any such net: per-pixel cross-entropy,
  optionally plus a soft Dice loss (weights every class equally, so small classes are not drowned
  out by background pixels), logging `train/loss`, `val/loss` and `val/miou` (mean Jaccard index
  over all classes, background included) per epoch. The optimizer and scheduler are `_partial_`
  factories from the config, as in classifier.py; a per-step scheduler (`scheduler_interval:
  step`, e.g. OneCycleLR) is given the run's `total_steps`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

from dlzoo.errors import ConfigError
from dlzoo.models.base import FamilyModule
from dlzoo.models.cnn import conv_norm_relu


def double_conv(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(conv_norm_relu(c_in, c_out, 1, norm), conv_norm_relu(c_out, c_out, 1, norm))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 4, channels=(16, 32, 64, 128), norm: str = "batch",
                 channels_last: bool = True):
        super().__init__()
        channels = list(channels)
        if len(channels) < 2:
            raise ConfigError(f"model.net.channels needs at least 2 levels, got {channels}")
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in channels:
            self.down.append(double_conv(c_prev, c, norm))
            c_prev = c
        # decoder level i fuses the upsampled level i+1 with encoder level i's skip
        self.up = nn.ModuleList(
            double_conv(channels[i + 1] + channels[i], channels[i], norm) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # NHWC input: every convolution after it runs channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()  # the bottleneck
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of 2|P∩T| / (|P| + |T|), with softmax probabilities P (batch-wide sums)."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


class SegmentationModule(FamilyModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None, num_classes: int = 4, dice_weight: float = 0.0,
                 scheduler_interval: str = "epoch"):
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.dice_weight = dice_weight
        self.val_miou = MulticlassJaccardIndex(num_classes, average="macro")

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # bf16-mixed: the softmax and its sums in float32
        loss = F.cross_entropy(logits, y)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, y)
        return loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", self._loss(logits, y), on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        self.val_miou(logits.argmax(dim=1), y)
        self.log("val/miou", self.val_miou, on_step=False, on_epoch=True, prog_bar=True)
