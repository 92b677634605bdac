"""YOLOv3 (Redmon & Farhadi 2018), as the paper designs it, on a small MobileNet backbone.

- Anchors: nine box shapes from k-means over the training boxes' (width, height) with the distance
  1 - IoU (boxes aligned at one corner), as YOLOv2/v3 choose them; sorted by area, three per output scale,
  the smallest at the finest. `YOLOv3Module` fits them when training starts (`kmeans_anchors`, seeded) and
  they travel in the checkpoint as a buffer.
- Three output scales (strides 8, 16, 32), fused top-down (FPN-style) as in the paper's upsample-and-merge
  neck; per scale and anchor each cell predicts (tx, ty, tw, th), an objectness logit and one logistic
  (sigmoid) score per class: independent classifiers, not a softmax, as in the paper.
- Targets: each object goes to the one anchor of the nine whose shape fits it best (IoU of the shapes), at
  the cell holding its centre on that anchor's scale: tx = cx / stride - cell_x (predicted through a
  sigmoid), tw = log(w / anchor_w).
- Losses (summed over cells, averaged over images): objectness BCE, target 1 for the assigned predictions
  and 0 for the rest, except predictions whose box already overlaps an object by IoU > `ignore_thresh`
  (neither rewarded nor punished); on assigned predictions, BCE on the centre offsets, squared error on
  tw, th, weighted by (2 - w h / image area) so small boxes count more, and per-class BCE.
- Decoding: score = objectness x class probability, then per-class NMS (`torchvision.ops.batched_nms`).

Why the k-means is written here: scikit-learn's KMeans has only the Euclidean distance, and the anchors
must minimise 1 - IoU (a Euclidean fit favours large boxes).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image

from dlzoo.errors import DataError
from dlzoo.models.detection import DetectionModule, MobileNetFeatures, TopDownPyramid
from dlzoo.models.mobilenet import DepthwiseSeparable

NUM_SCALES, ANCHORS_PER_SCALE = 3, 3


def shape_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU [N, K] of boxes and anchors placed at one corner: only their widths and heights count."""
    inter = torch.min(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """k anchor shapes [k, 2] (w, h) from box shapes [N, 2] by k-means with the distance 1 - IoU, the
    centres the median of their cluster (robust to outliers); sorted by area. Deterministic for a seed."""
    wh = np.asarray(wh, dtype=np.float64)
    if len(wh) < k:
        raise DataError(f"YOLOv3's k-means anchors need at least {k} training boxes, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)]
    boxes = torch.from_numpy(wh)
    for _ in range(iterations):
        nearest = shape_iou(boxes, torch.from_numpy(centres)).argmax(1).numpy()
        new = np.stack([np.median(wh[nearest == j], axis=0) if (nearest == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.prod(1))]


class YOLOv3(nn.Module):
    def __init__(
        self,
        num_classes: int = 4,
        size: int = 128,
        channels=(16, 32, 64, 96, 96, 160, 160, 192),
        strides=(2, 2, 2, 1, 1, 2, 1, 2),
        outputs=(4, 6, 7),
        neck_channels: int = 96,
        norm: str = "batch",
        ignore_thresh: float = 0.5,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ):
        """num_classes counts the background, as torchvision's detectors do (shapes: 3 + 1); YOLOv3 has no
        background class, so it predicts num_classes - 1 scores."""
        super().__init__()
        if len(outputs) != NUM_SCALES:
            raise ValueError(f"YOLOv3 predicts at {NUM_SCALES} scales: outputs needs {NUM_SCALES} maps, got {len(outputs)}")
        self.num_classes = num_classes - 1
        self.ignore_thresh, self.score_thresh = ignore_thresh, score_thresh
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.transform = GeneralizedRCNNTransform(size, size, [0.5] * 3, [0.25] * 3, size_divisible=1, fixed_size=(size, size))
        self.backbone = TopDownPyramid(MobileNetFeatures(channels, strides, outputs, norm), neck_channels, norm)
        per_cell = ANCHORS_PER_SCALE * (5 + self.num_classes)
        self.heads = nn.ModuleList(
            nn.Sequential(DepthwiseSeparable(neck_channels, neck_channels, 1, norm), nn.Conv2d(neck_channels, per_cell, 1))
            for _ in range(NUM_SCALES)
        )
        for head in self.heads:  # objectness starts at ~1%: almost every prediction is background
            head[-1].bias.data.view(ANCHORS_PER_SCALE, -1)[:, 4] = -4.6
        # Placeholder shapes until `set_anchors` (geometric, 8 px to half the image); a checkpoint brings the fitted ones.
        default = torch.tensor(np.geomspace(8, size / 2, NUM_SCALES * ANCHORS_PER_SCALE), dtype=torch.float32)
        self.register_buffer("anchors", torch.stack([default, default], 1))

    def set_anchors(self, anchors) -> None:
        anchors = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
        if anchors.shape != self.anchors.shape:
            raise ValueError(f"YOLOv3 needs {len(self.anchors)} anchors (w, h), got shape {tuple(anchors.shape)}")
        self.anchors.copy_(anchors[anchors.prod(1).argsort()])

    def forward(self, images, targets=None):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        x = batch.tensors
        maps = list(self.backbone(x).values())  # strides 8, 16, 32
        outs = []
        for head, f in zip(self.heads, maps):
            b, _, h, w = f.shape
            outs.append(head(f).view(b, ANCHORS_PER_SCALE, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2))
        boxes = [self._boxes(out, s, x.shape[-1] / out.shape[3]) for s, out in enumerate(outs)]  # xyxy px
        if self.training:
            return self.loss(outs, boxes, targets, x.shape[-2:])
        detections = self.decode(outs, boxes, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def _anchors(self, scale: int) -> torch.Tensor:
        return self.anchors[scale * ANCHORS_PER_SCALE:(scale + 1) * ANCHORS_PER_SCALE]

    def _boxes(self, out: torch.Tensor, scale: int, stride: float) -> torch.Tensor:
        """Predicted boxes [B, A, H, W, 4] (xyxy, px) of one scale."""
        h, w = out.shape[2:4]
        ys, xs = torch.meshgrid(torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij")
        centre = (torch.stack([xs, ys], -1) + out[..., :2].sigmoid()) * stride
        size = out[..., 2:4].clamp(max=6).exp() * self._anchors(scale)[None, :, None, None]
        return torch.cat([centre - size / 2, centre + size / 2], -1)

    def assign(self, gt: torch.Tensor, grid_sizes: list[tuple[int, int]], image_size) -> list[tuple]:
        """Where each object [N, 4] (xyxy) is predicted: (scale, anchor, cell y, cell x, tx, ty, tw, th) per object,
        its best-fitting anchor of all nine at the cell holding its centre."""
        cxcywh = box_convert(gt, "xyxy", "cxcywh")
        best = shape_iou(cxcywh[:, 2:], self.anchors).argmax(1)
        out = []
        for (cx, cy, w, h), k in zip(cxcywh.tolist(), best.tolist()):
            scale, anchor = divmod(k, ANCHORS_PER_SCALE)
            gh, gw = grid_sizes[scale]
            sy, sx = image_size[0] / gh, image_size[1] / gw
            col, row = min(int(cx / sx), gw - 1), min(int(cy / sy), gh - 1)
            aw, ah = self.anchors[k].tolist()
            out.append((scale, anchor, row, col, cx / sx - col, cy / sy - row, math.log(w / aw), math.log(h / ah)))
        return out

    def loss(self, outs, boxes, targets, image_size) -> dict:
        grid_sizes = [tuple(o.shape[2:4]) for o in outs]
        area = float(image_size[0] * image_size[1])
        obj_loss, xy_loss, wh_loss, cls_loss = [], [], [], []
        for i, target in enumerate(targets):
            gt, labels = target["boxes"], target["labels"] - 1
            obj_target = [torch.zeros(o.shape[1:4], device=o.device) for o in outs]
            weight = [torch.ones(o.shape[1:4], device=o.device) for o in outs]
            for s, b in enumerate(boxes):  # predictions already on an object: not punished as background
                if len(gt):
                    overlap = box_iou(b[i].detach().reshape(-1, 4), gt).max(1).values.view(weight[s].shape)
                    weight[s][overlap > self.ignore_thresh] = 0.0
            for (s, a, row, col, tx, ty, tw, th), (x0, y0, x1, y1), label in zip(
                    self.assign(gt, grid_sizes, image_size), gt.tolist(), labels.tolist()):
                obj_target[s][a, row, col], weight[s][a, row, col] = 1.0, 1.0
                p = outs[s][i, a, row, col]
                scale = 2.0 - (x1 - x0) * (y1 - y0) / area
                xy_loss.append(scale * F.binary_cross_entropy_with_logits(p[:2], p.new_tensor([tx, ty]), reduction="sum"))
                wh_loss.append(scale * ((p[2:4] - p.new_tensor([tw, th])) ** 2).sum())
                one_hot = F.one_hot(torch.tensor(label, device=p.device), self.num_classes).float()
                cls_loss.append(F.binary_cross_entropy_with_logits(p[5:], one_hot, reduction="sum"))
            for s, o in enumerate(outs):
                obj_loss.append((F.binary_cross_entropy_with_logits(o[i, ..., 4], obj_target[s], reduction="none")
                                 * weight[s]).sum())
        n = len(targets)
        zero = sum(o.sum() for o in outs) * 0  # keeps the graph when a batch has no objects
        return {"objectness": sum(obj_loss) / n, "xy": (sum(xy_loss) + zero) / n, "wh": (sum(wh_loss) + zero) / n,
                "classification": (sum(cls_loss) + zero) / n}

    @torch.no_grad()
    def decode(self, outs, boxes, image_sizes) -> list[dict]:
        scores = torch.cat([(o[..., 4:5].sigmoid() * o[..., 5:].sigmoid()).flatten(1, 3) for o in outs], 1)  # [B, P, C]
        boxes = torch.cat([b.flatten(1, 3) for b in boxes], 1)  # [B, P, 4]
        detections = []
        for image_scores, image_boxes, image_size in zip(scores, boxes, image_sizes):
            index, label = (image_scores > self.score_thresh).nonzero(as_tuple=True)
            score, box = image_scores[index, label], clip_boxes_to_image(image_boxes[index], image_size)
            keep = batched_nms(box, score, label, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": box[keep], "scores": score[keep], "labels": label[keep] + 1})
        return detections


class YOLOv3Module(DetectionModule):
    """DetectionModule that fits the net's anchors by k-means over the training boxes when training starts
    (at the net's input size); a module loaded from a checkpoint keeps the anchors it was trained with."""

    def __init__(self, net: YOLOv3, optimizer, scheduler=None, scheduler_interval: str = "step",
                 hflip: float = 0.5, vflip: float = 0.0, anchor_seed: int = 0):
        super().__init__(net, optimizer, scheduler, scheduler_interval, hflip, vflip)
        self.anchor_seed = anchor_seed

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.trainer.ckpt_path:  # resuming: the checkpoint holds the fitted anchors
            return
        dataset = self.trainer.datamodule.datasets["train"]
        size = self.net.transform.fixed_size
        wh = []
        for image, target in zip(dataset.images, dataset.targets):
            b = target["boxes"]
            wh.append(torch.stack([(b[:, 2] - b[:, 0]) * size[1] / image["width"],
                                   (b[:, 3] - b[:, 1]) * size[0] / image["height"]], 1))
        self.net.set_anchors(kmeans_anchors(torch.cat(wh).numpy(), len(self.net.anchors), self.anchor_seed))
