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
  sigmoid), tw = log(w / anchor_w). With `anchor_iou_thresh` set, it also goes to every other anchor whose
  shape IoU with it exceeds that threshold, as ultralytics' YOLOv3 matches (`iou_t`): more positive
  predictions per object, so objectness and boxes learn in fewer epochs. null keeps the paper's one anchor.
- Losses (summed over cells, averaged over images): objectness BCE, target 1 for the assigned predictions
  and 0 for the rest, except predictions whose box already overlaps an object by IoU > `ignore_thresh`
  (neither rewarded nor punished); on assigned predictions, BCE on the centre offsets, squared error on
  tw, th, weighted by (2 - w h / image area) so small boxes count more, and per-class BCE.
- Decoding: score = objectness x class probability, then per-class NMS (`torchvision.ops.batched_nms`).

Why the k-means is written here: scikit-learn's KMeans has only the Euclidean distance, and the anchors
must minimise 1 - IoU (a Euclidean fit favours large boxes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, box_convert, clip_boxes_to_image

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


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [B, P, N] of boxes [B, P, 4] and [B, N, 4] (xyxy), image by image: `box_iou` over a batch."""
    lt, rb = torch.max(a[:, :, None, :2], b[:, None, :, :2]), torch.min(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a, area_b = (a[..., 2:] - a[..., :2]).prod(-1), (b[..., 2:] - b[..., :2]).prod(-1)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter).clamp(min=1e-9)


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
        anchor_iou_thresh: float | None = None,
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
        self.anchor_iou_thresh = anchor_iou_thresh
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

    def assign(self, gt: torch.Tensor, grid_sizes: list[tuple[int, int]], image_size) -> torch.Tensor:
        """Where each object [N, 4] (xyxy) is predicted, one row per (object, anchor) pair: [M, 9] float with the
        columns object index, scale, anchor, cell y, cell x, tx, ty, tw, th; ordered by object, then anchor. An
        object goes to its best-fitting anchor of all nine (and, with `anchor_iou_thresh`, to every anchor fitting
        it above that IoU), at the cell holding its centre on that anchor's scale."""
        cxcywh = box_convert(gt.float(), "xyxy", "cxcywh")
        ious = shape_iou(cxcywh[:, 2:], self.anchors)
        chosen = torch.zeros_like(ious, dtype=torch.bool)
        if self.anchor_iou_thresh is not None:
            chosen |= ious > self.anchor_iou_thresh
        chosen[torch.arange(len(gt)), ious.argmax(1)] = True
        obj, k = chosen.nonzero(as_tuple=True)
        scale, anchor = k // ANCHORS_PER_SCALE, k % ANCHORS_PER_SCALE
        grids = torch.tensor(grid_sizes, dtype=torch.float32, device=gt.device)[scale]  # [M, 2] (h, w)
        stride_y, stride_x = image_size[0] / grids[:, 0], image_size[1] / grids[:, 1]
        cx, cy, w, h = cxcywh[obj].unbind(1)
        col = torch.minimum((cx / stride_x).floor(), grids[:, 1] - 1)
        row = torch.minimum((cy / stride_y).floor(), grids[:, 0] - 1)
        aw, ah = self.anchors[k].unbind(1)
        return torch.stack([obj.float(), scale.float(), anchor.float(), row, col, cx / stride_x - col, cy / stride_y - row,
                            (w / aw).log(), (h / ah).log()], 1)

    def loss(self, outs, boxes, targets, image_size) -> dict:
        """The four terms, summed over predictions and averaged over images; all images of the batch at once (a
        loop over objects costs more than the network on a CPU)."""
        grid_sizes = [tuple(o.shape[2:4]) for o in outs]
        area = float(image_size[0] * image_size[1])
        n, device = len(targets), outs[0].device
        counts = [len(t["boxes"]) for t in targets]
        gt = torch.cat([t["boxes"] for t in targets]).reshape(-1, 4).to(device)
        labels = torch.cat([t["labels"] for t in targets]).to(device) - 1
        image_of = torch.repeat_interleave(torch.arange(n, device=device), torch.tensor(counts, device=device))
        # predictions already on an object of their image: not punished as background (IoU > ignore_thresh)
        padded = torch.zeros(n, max(counts, default=0), 4, device=device)
        valid = torch.zeros(n, padded.shape[1], dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            padded[i, : counts[i]], valid[i, : counts[i]] = t["boxes"], True
        weights, obj_targets = [], []
        for b in boxes:
            weight = torch.ones(b.shape[:4], device=device)
            if padded.shape[1]:
                overlap = _pairwise_iou(b.detach().flatten(1, 3), padded).masked_fill(~valid[:, None], 0).amax(-1)
                weight = weight.masked_fill(overlap.view_as(weight) > self.ignore_thresh, 0.0)
            weights.append(weight)
            obj_targets.append(torch.zeros_like(weight))
        rows = self.assign(gt, grid_sizes, image_size)
        obj, scale, anchor, cell_y, cell_x = rows[:, :5].long().unbind(1)
        image = image_of[obj]
        xy_loss = wh_loss = cls_loss = sum(o.sum() for o in outs) * 0  # keeps the graph when a batch has no objects
        for s, out in enumerate(outs):
            at = scale == s
            index = (image[at], anchor[at], cell_y[at], cell_x[at])
            obj_targets[s][index], weights[s][index] = 1.0, 1.0
            p, t = out[index], rows[at, 5:].to(out.dtype)
            wh = gt[obj[at], 2:] - gt[obj[at], :2]
            small_first = (2.0 - wh.prod(1) / area)[:, None]  # small boxes count more
            xy_loss = xy_loss + (small_first * F.binary_cross_entropy_with_logits(p[:, :2], t[:, :2], reduction="none")).sum()
            wh_loss = wh_loss + (small_first * (p[:, 2:4] - t[:, 2:]) ** 2).sum()
            one_hot = F.one_hot(labels[obj[at]], self.num_classes).to(out.dtype)
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(p[:, 5:], one_hot, reduction="sum")
        obj_loss = sum((F.binary_cross_entropy_with_logits(o[..., 4], t, reduction="none") * w).sum()
                       for o, t, w in zip(outs, obj_targets, weights))
        return {"objectness": obj_loss / n, "xy": xy_loss / n, "wh": wh_loss / n, "classification": cls_loss / n}

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

    def __init__(self, net: YOLOv3, optimizer, scheduler=None, scheduler_interval: str = "step", anchor_seed: int = 0):
        super().__init__(net, optimizer, scheduler, scheduler_interval)
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
