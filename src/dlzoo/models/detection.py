"""What the one-stage detectors (ssd.py, yolo.py) share: a MobileNet feature pyramid and the
LightningModule (summed loss dict in training, COCO mAP on the validation split).

Both nets follow torchvision's detection interface: `net(images, targets)` in train mode returns a
dict of losses, `net(images)` in eval mode a list of {"boxes" xyxy, "scores", "labels"} per image.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from dlzoo.models.base import FamilyModule
from dlzoo.models.cnn import conv_norm_relu
from dlzoo.models.mobilenet import DepthwiseSeparable


class MobileNetFeatures(nn.Module):
    """A full-conv stem, then depthwise-separable blocks; returns the outputs of the blocks listed in
    `outputs` (e.g. strides 8, 16, 32) as an OrderedDict, the form torchvision's detectors take."""

    def __init__(self, channels=(16, 32, 64, 96, 96, 160, 160, 192), strides=(2, 2, 2, 1, 1, 2, 1, 2),
                 outputs=(4, 6, 7), norm: str = "batch", in_channels: int = 3):
        super().__init__()
        self.outputs = tuple(outputs)
        blocks = [conv_norm_relu(in_channels, channels[0], strides[0], norm)]
        for c_in, c_out, stride in zip(channels, channels[1:], strides[1:]):
            blocks.append(DepthwiseSeparable(c_in, c_out, stride, norm))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = [channels[i] for i in self.outputs]  # read by torchvision's SSD

    def forward(self, x: torch.Tensor) -> OrderedDict:
        features = OrderedDict()
        for i, block in enumerate(self.blocks[: self.outputs[-1] + 1]):
            x = block(x)
            if i in self.outputs:
                features[str(len(features))] = x
        return features


class TopDownPyramid(nn.Module):
    """FPN-style top-down fusion (Lin et al. 2017): 1x1 convs bring every backbone map to `channels`,
    then each map adds the upsampled coarser one, so the fine maps that find small objects also
    carry the deeper layers' semantics. Same OrderedDict in, same keys out."""

    def __init__(self, backbone: nn.Module, channels: int, norm: str = "batch"):
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList(conv_norm_relu(c, channels, 1, norm, kernel=1) for c in backbone.out_channels)
        self.out_channels = [channels] * len(backbone.out_channels)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        features = self.backbone(x)
        names, maps = list(features), list(features.values())
        fused = [self.lateral[-1](maps[-1])]
        for f, lateral in zip(reversed(maps[:-1]), reversed(self.lateral[:-1])):
            fused.insert(0, lateral(f) + F.interpolate(fused[0], size=f.shape[-2:], mode="nearest"))
        return OrderedDict(zip(names, fused))


class DetectionModule(FamilyModule):
    """Train: the sum of the net's losses. Validate: the same loss, COCO mAP@[.5:.95] and mAP@.5 (pycocotools).

    Optimiser and schedule (`scheduler_interval`) as in every family: see dlzoo/models/base.py. Augmentation
    (flips, photometric distortion) is the data's: `data.module.train_transforms`.
    """

    def __init__(self, net: nn.Module, optimizer, scheduler=None, scheduler_interval: str = "step"):
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def forward(self, images, targets=None):
        return self.net(images, targets)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.net(images, targets)
        loss = sum(losses.values())
        n = len(images)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        for name, value in losses.items():  # torchvision's R-CNN names start with loss_, ours do not
            self.log(f"train/loss_{name.removeprefix('loss_')}", value, on_step=False, on_epoch=True, batch_size=n,
                     sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.val_map.update(self.net(images), [metric_target(t) for t in targets])
        self.log("val/loss", sum(self.held_out_losses(images, targets).values()), batch_size=len(images), sync_dist=True)

    @torch.no_grad()
    def held_out_losses(self, images, targets) -> dict:
        """The loss dict on held-out data. The nets return losses only in train mode, so switch to it
        with every batch norm kept in eval mode: running statistics used, none updated. The random
        state is restored after (train-mode resizing draws from it), so validating does not change training."""
        self.net.train()
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                return self.net(images, targets)
        finally:
            self.net.eval()

    def on_validation_epoch_end(self):
        result = self.val_map.compute()
        self.log("val/map", result["map"], prog_bar=True)
        self.log("val/map_50", result["map_50"], prog_bar=True)
        self.val_map.reset()


def metric_target(target: dict) -> dict:
    """A detection target as COCO evaluation takes it (torchmetrics' MeanAveragePrecision): the
    objects, then the crowd regions flagged `iscrowd`=1, so that, as in COCOeval, detections on a
    crowd region count neither as true nor as false positives and a crowd region is never missed."""
    crowd_boxes = target.get("crowd_boxes", torch.zeros(0, 4))
    crowd_labels = target.get("crowd_labels", torch.zeros(0, dtype=torch.int64))
    boxes = torch.cat([target["boxes"], crowd_boxes.to(target["boxes"])])
    return {
        "boxes": boxes,
        "labels": torch.cat([target["labels"], crowd_labels.to(target["labels"])]),
        "iscrowd": torch.cat([torch.zeros(len(target["labels"]), dtype=torch.int64, device=boxes.device),
                              torch.ones(len(crowd_labels), dtype=torch.int64, device=boxes.device)]),
    }
