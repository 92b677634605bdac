"""YOLO-style one-stage detector, anchor-free (in the spirit of YOLOX / FCOS): no default boxes.

The backbone's stride-8/16/32 maps are fused top-down (FPN-style: upsample, add) into one stride-8
grid, so every cell sees context of a 48 px object while keeping the resolution of a 12 px one.
Each cell predicts an objectness logit, class logits (no background class) and its distances
(left, top, right, bottom) to the box edges.

Assignment: a cell is positive for an object when its centre lies inside the box and within
`radius` strides of the box centre (the "centre sampling" of FCOS/YOLOX), so each object gets a
few cells; a cell claimed by two objects goes to the smaller one. Losses, averaged per positive:
- objectness: BCE over all cells, target = IoU of the cell's predicted box with its object
  (0 for negatives), so the score ranks well-localised boxes first (IoU-aware, as in VarifocalNet);
- class: cross-entropy on positives;  - box: GIoU loss on positives (scale-invariant).
Decoding: score = objectness * class probability, then per-class NMS (`batched_nms`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss

from dlzoo.models.detection import MobileNetFeatures, TopDownPyramid
from dlzoo.models.mobilenet import DepthwiseSeparable


class YOLO(nn.Module):
    def __init__(
        self,
        num_classes: int = 4,
        size: int = 128,
        channels=(16, 32, 64, 96, 96, 160, 160, 192),
        strides=(2, 2, 2, 1, 1, 2, 1, 2),
        outputs=(4, 6, 7),
        neck_channels: int = 96,
        head_depth: int = 2,
        norm: str = "batch",
        radius: float = 1.5,
        box_weight: float = 2.0,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ):
        """num_classes counts the background, as torchvision's detectors do (shapes: 3 + 1)."""
        super().__init__()
        self.num_classes, self.radius, self.box_weight = num_classes - 1, radius, box_weight
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        # The same resize + normalise (and the inverse for boxes) as SSD, so any image size works.
        self.transform = GeneralizedRCNNTransform(size, size, [0.5] * 3, [0.25] * 3, size_divisible=1, fixed_size=(size, size))
        self.backbone = TopDownPyramid(MobileNetFeatures(channels, strides, outputs, norm), neck_channels, norm)
        self.head = nn.Sequential(*[DepthwiseSeparable(neck_channels, neck_channels, 1, norm) for _ in range(head_depth)])
        self.pred = nn.Conv2d(neck_channels, 1 + self.num_classes + 4, 1)
        nn.init.constant_(self.pred.bias[0], -4.6)  # objectness starts at ~1%: most cells are background

    def forward(self, images, targets=None):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        x = batch.tensors
        finest = next(iter(self.backbone(x).values()))  # the stride-8 map, fused with the coarser ones
        out = self.pred(self.head(finest))  # [B, 1 + C + 4, H, W]
        stride = x.shape[-1] / out.shape[-1]
        h, w = out.shape[-2:]
        out = out.flatten(2).transpose(1, 2)  # [B, H*W, 1 + C + 4]
        ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        centers = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * stride  # cell centres, px
        # Distances to the edges in px; exp keeps them positive, clamp keeps exp finite early on.
        ltrb = out[..., -4:].clamp(max=8).exp() * stride
        boxes = torch.cat([centers - ltrb[..., :2], centers + ltrb[..., 2:]], -1)
        obj_logit, cls_logit = out[..., 0], out[..., 1:-4]
        if self.training:
            return self.loss(obj_logit, cls_logit, boxes, centers, stride, targets)
        detections = self.decode(obj_logit, cls_logit, boxes, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def assign(self, gt: torch.Tensor, centers: torch.Tensor, stride: float) -> torch.Tensor:
        """Index of the object each cell is assigned to, -1 for background: [H*W]."""
        if len(gt) == 0:
            return torch.full((len(centers),), -1, dtype=torch.long, device=centers.device)
        c = centers[:, None]  # [HW, 1, 2]
        inside = (c > gt[None, :, :2]).all(-1) & (c < gt[None, :, 2:]).all(-1)
        offset = (c - (gt[None, :, :2] + gt[None, :, 2:]) / 2).abs()
        near = (offset < self.radius * stride).all(-1)
        own = (offset <= stride / 2).all(-1)  # the cell holding the centre, even for a tiny object
        candidate = (inside & near) | own
        area = ((gt[:, 2:] - gt[:, :2]).prod(-1))[None].expand_as(candidate)
        area = torch.where(candidate, area, torch.full_like(area, float("inf")))
        best_area, index = area.min(1)  # ambiguous cell -> the smaller object
        return torch.where(torch.isfinite(best_area), index, torch.full_like(index, -1))

    def loss(self, obj_logit, cls_logit, boxes, centers, stride, targets) -> dict:
        obj_target = torch.zeros_like(obj_logit)
        cls_loss, box_loss, num_pos = [], [], 0
        for i, target in enumerate(targets):
            index = self.assign(target["boxes"], centers, stride)
            pos = index >= 0
            num_pos += int(pos.sum())
            if not pos.any():
                continue
            gt = target["boxes"][index[pos]]
            pred = boxes[i, pos]
            obj_target[i, pos] = box_iou(pred.detach(), gt).diagonal().clamp(min=0.0)
            cls_loss.append(F.cross_entropy(cls_logit[i, pos], target["labels"][index[pos]] - 1, reduction="sum"))
            box_loss.append(generalized_box_iou_loss(pred, gt, reduction="sum"))
        n = max(num_pos, 1)
        zero = obj_logit.sum() * 0  # keeps the graph when a batch has no objects
        return {
            "objectness": F.binary_cross_entropy_with_logits(obj_logit, obj_target, reduction="sum") / n,
            "classification": (sum(cls_loss) + zero) / n,
            "box": self.box_weight * (sum(box_loss) + zero) / n,
        }

    @torch.no_grad()
    def decode(self, obj_logit, cls_logit, boxes, image_sizes) -> list[dict]:
        scores_all = obj_logit.sigmoid()[..., None] * cls_logit.softmax(-1)  # [B, HW, C]
        detections = []
        for scores, image_boxes, image_size in zip(scores_all, boxes, image_sizes):
            cell, label = (scores > self.score_thresh).nonzero(as_tuple=True)  # every (cell, class) above
            score, box = scores[cell, label], clip_boxes_to_image(image_boxes[cell], image_size)
            keep = batched_nms(box, score, label, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": box[keep], "scores": score[keep], "labels": label[keep] + 1})
        return detections
