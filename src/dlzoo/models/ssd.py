"""SSD (Liu et al. 2016): one-stage detection from several feature maps with default (anchor) boxes.

Each location of each map holds a few default boxes; the head predicts, per default box, class
scores (background included) and an offset to the matched ground-truth box. Training matches
boxes to ground truth by IoU (>= iou_thresh, plus each object's best box), and mines the hardest
negatives (3 per positive). torchvision's `SSD` does the matching, losses and decoding + NMS; this
module supplies the backbone (MobileNet blocks, dlzoo/models/detection.py) and default boxes sized
for the data: on the 128 px shapes, objects are 12-48 px, so the squares per map (scale_k and
sqrt(scale_k * scale_k+1) of the image side) are 10 and 14 px at stride 8, 20 and 28 px at stride 16,
38 and 51 px at stride 32.
"""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead

from dlzoo.models.detection import MobileNetFeatures, TopDownPyramid


def ssd_mobilenet(
    num_classes: int = 4,
    size: int = 128,
    channels=(16, 32, 64, 96, 96, 160, 160, 192),
    strides=(2, 2, 2, 1, 1, 2, 1, 2),
    outputs=(4, 6, 7),
    norm: str = "batch",
    fpn_channels: int | None = None,
    scales=(0.08, 0.16, 0.3, 0.5),
    aspect_ratios=((), (), ()),
    iou_thresh: float = 0.4,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 100,
) -> SSD:
    """num_classes counts the background (shapes: 3 + 1). `aspect_ratios` per map adds boxes of
    ratio r and 1/r besides the two squares; the shapes' boxes are all near-square, so none."""
    backbone = MobileNetFeatures(channels, strides, outputs, norm)
    if fpn_channels:  # optional top-down fusion: deeper semantics on the fine maps
        backbone = TopDownPyramid(backbone, fpn_channels, norm)
    anchors = DefaultBoxGenerator([list(a) for a in aspect_ratios], scales=list(scales))
    head = SSDHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes)
    return SSD(
        backbone, anchors, (size, size), num_classes,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],  # inputs in [0, 1] -> about [-2, 2]
        head=head, score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
        iou_thresh=iou_thresh, topk_candidates=200,
    )
