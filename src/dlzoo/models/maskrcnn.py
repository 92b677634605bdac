"""Mask R-CNN (He et al. 2017) for instance segmentation, small enough to train from scratch on a CPU.

torchvision's `MaskRCNN` does the two stages (RPN proposals, RoIAlign, box and mask heads), the target
matching, the losses and the post-processing; this module supplies the parts sized for 128 px images
with 12-48 px objects and no pretrained weights (none exist offline):

- backbone: the MobileNet blocks of dlzoo/models/detection.py with GroupNorm (batch statistics of a
  few images per step are too noisy to train normalisation from scratch), maps at strides 4, 8 and 16
  fused top-down (FPN-style) to `fpn_channels`; stride 4 because a mask is sampled from the map:
  a 12 px object is 3 cells there, 1.5 at stride 8;
- anchors: two square sizes per map around the objects' sizes;
- RoI levels: torchvision's level rule is tuned to ImageNet-sized objects (224 px -> level 4) and would
  send every object here to the finest map; `canonical_scale` 32 at level 3 spreads them over the three;
- heads: the standard heads, narrower (256-wide box MLP, 4 x 64-channel mask convolutions with GroupNorm).

`transform` keeps the data's size (min_size = max_size = size): the default 800 px resize costs ~40x the
compute on these images for nothing.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from dlzoo.models.detection import DetectionModule, MobileNetFeatures, TopDownPyramid, metric_target


class _Pyramid(TopDownPyramid):
    """TopDownPyramid with the single `out_channels` int torchvision's two-stage detectors read."""

    def __init__(self, backbone: nn.Module, channels: int, norm: str):
        super().__init__(backbone, channels, norm)
        self.out_channels = channels


def maskrcnn_small(
    num_classes: int = 4,
    size: int = 128,
    channels=(16, 32, 48, 64, 96, 96, 128, 128),
    strides=(2, 2, 1, 2, 1, 1, 2, 1),
    outputs=(2, 5, 7),
    norm: str = "group",
    fpn_channels: int = 64,
    anchor_sizes=((12, 20), (28, 40), (56, 80)),
    canonical_scale: int = 32,
    sampling_ratio: int = 2,
    box_head_dim: int = 256,
    mask_layers=(64, 64, 64, 64),
    rpn_pre_nms_top_n_train: int = 600,
    rpn_post_nms_top_n_train: int = 300,
    rpn_pre_nms_top_n_test: int = 300,
    rpn_post_nms_top_n_test: int = 100,
    box_batch_size_per_image: int = 128,
    box_score_thresh: float = 0.01,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 50,
) -> MaskRCNN:
    """num_classes counts the background (shapes: 3 + 1). `outputs` are the backbone blocks whose maps
    feed the pyramid, finest first, one anchor-size tuple per map."""
    if len(anchor_sizes) != len(outputs):
        raise ValueError(f"anchor_sizes needs one tuple per output map ({len(outputs)}), got {len(anchor_sizes)}")
    backbone = _Pyramid(MobileNetFeatures(channels, strides, outputs, norm), fpn_channels, norm)
    names = [str(i) for i in range(len(outputs))]
    anchors = AnchorGenerator(tuple(tuple(s) for s in anchor_sizes), ((1.0,),) * len(outputs))
    group_norm = partial(nn.GroupNorm, 8)
    roi = partial(MultiScaleRoIAlign, names, sampling_ratio=sampling_ratio, canonical_scale=canonical_scale, canonical_level=3)
    return MaskRCNN(
        backbone,
        num_classes=None,  # the predictors below set it
        min_size=size, max_size=size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],  # inputs in [0, 1] -> about [-2, 2]
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_roi_pool=roi(output_size=7),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh, box_nms_thresh=box_nms_thresh, box_detections_per_img=box_detections_per_img,
        mask_roi_pool=roi(output_size=14),
        mask_head=MaskRCNNHeads(fpn_channels, list(mask_layers), 1, norm_layer=group_norm),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes),
    )


def instance_metric_target(target: dict) -> dict:
    """`metric_target` (objects, then crowd regions flagged iscrowd) with their masks, as bool."""
    out = metric_target(target)
    h, w = target["masks"].shape[-2:]
    crowd = target.get("crowd_masks", torch.zeros((0, h, w), dtype=torch.uint8))
    out["masks"] = torch.cat([target["masks"], crowd.to(target["masks"])]).bool()
    return out


def instance_metric_prediction(pred: dict, threshold: float = 0.5) -> dict:
    """A Mask R-CNN output (soft masks [N, 1, H, W]) as COCO evaluation takes it: binary masks [N, H, W]."""
    return {**pred, "masks": pred["masks"][:, 0] > threshold}


class InstanceSegmentationModule(DetectionModule):
    """DetectionModule for nets that also predict masks (the targets carry them; the data's v2 transforms
    move them with the pixels): validation reports COCO box and mask mAP (`val/map` the box mAP@[.5:.95], `val/segm_map` the mask one)."""

    def __init__(self, net: nn.Module, optimizer, scheduler=None, scheduler_interval: str = "step"):
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type=("bbox", "segm"), backend="pycocotools")

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        preds = [instance_metric_prediction(p) for p in self.net(images)]
        self.val_map.update(preds, [instance_metric_target(t) for t in targets])
        train_targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]
        self.log("val/loss", sum(self.held_out_losses(images, train_targets).values()), batch_size=len(images),
                 sync_dist=True)

    def on_validation_epoch_end(self):
        result = self.val_map.compute()
        self.log("val/map", result["bbox_map"])
        self.log("val/map_50", result["bbox_map_50"])
        self.log("val/segm_map", result["segm_map"], prog_bar=True)
        self.log("val/segm_map_50", result["segm_map_50"], prog_bar=True)
        self.val_map.reset()
