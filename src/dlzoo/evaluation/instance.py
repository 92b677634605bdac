"""Instance-segmentation metrics on the held-out split: COCO mask and box mAP@[.5:.95], mAP@.5, mAP@.75 and
AP per class (torchmetrics' MeanAveragePrecision with iou_type=("bbox", "segm") on the pycocotools backend),
and overlays of the predicted instance masks beside the true ones.

The test split is whatever `data.module` says: the prepared shapes, or any COCO annotation file with
`segmentation` polygons or RLE and its image folder (`data.module.test_json=... data.module.test_images=...`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

from dlzoo.evaluation.ood import with_ood
from dlzoo.models.maskrcnn import instance_metric_prediction, instance_metric_target
from dlzoo.plotting import plt, save_figure

IOU_TYPES = ("bbox", "segm")


@torch.no_grad()
def predict(module, loader) -> tuple[list, list, list]:
    """Images, predictions (binary masks) and targets (objects and crowd regions) of a whole split."""
    module.eval()
    images, preds, targets = [], [], []
    for x, y in loader:
        images.extend(x)
        preds.extend(instance_metric_prediction(p) for p in module(x))
        targets.extend(instance_metric_target(t) for t in y)
    return images, preds, targets


def coco_scores(preds: list, targets: list, names: list[str]) -> dict:
    """COCO box and mask AP of predictions against targets: test/segm_map, test/bbox_map_50, test/segm_ap/<class> ..."""
    mean_ap = MeanAveragePrecision(box_format="xyxy", iou_type=IOU_TYPES, backend="pycocotools", class_metrics=True)
    mean_ap.update(preds, targets)
    result = mean_ap.compute()
    metrics = {}
    for kind in IOU_TYPES:
        for key in ("map", "map_50", "map_75", "mar_100"):
            metrics[f"test/{kind}_{key}"] = float(result[f"{kind}_{key}"])
        classes = result["classes"].reshape(-1).tolist()
        for label, ap in zip(classes, result[f"{kind}_map_per_class"].reshape(-1).tolist()):
            metrics[f"test/{kind}_ap/{names[label] if label < len(names) else label}"] = float(ap)
    return metrics


def evaluate(module, datamodule, out_dir: str | Path, class_names: list[str] | None = None,
             score_threshold: float = 0.5, num_plotted: int = 8, ood_dir: str | None = None,
             ood_min_kept: float = 0.85, max_images: int | None = None) -> tuple[dict, list[Path]]:
    """`score_threshold` only filters what is drawn: mAP uses every detection (it sweeps all thresholds).
    `ood_dir`: also score that COCO folder's test split (`ood/...`, see dlzoo.evaluation.ood)."""
    def score(module, datamodule, out_dir, split):
        return _evaluate(module, datamodule, out_dir, class_names, score_threshold, num_plotted, split)

    kept = ("test/segm_map_50", "test/segm_map", "test/bbox_map_50")
    return with_ood(score, module, datamodule, out_dir, ood_dir, kept, ood_min_kept, max_images)


def _evaluate(module, datamodule, out_dir, class_names, score_threshold, num_plotted,
              split: str = "test") -> tuple[dict, list[Path]]:
    datamodule.setup("test")
    images, preds, targets = predict(module, datamodule.test_dataloader())
    names = list(class_names) if class_names else datamodule.category_names  # index = label, 0 = background
    metrics = coco_scores(preds, targets, names)
    metrics["test/num_examples"] = len(images)
    metrics["test/num_objects"] = int(sum(int((t["iscrowd"] == 0).sum()) for t in targets))
    title = (f"{split} mask mAP {metrics['test/segm_map']:.3f} (@.5 {metrics['test/segm_map_50']:.3f}), "
             f"box mAP {metrics['test/bbox_map']:.3f}")
    out = Path(out_dir) / "instances.png"
    return metrics, [plot_instances(images[:num_plotted], preds, targets, names, out, score_threshold, title)]


def _overlay(ax, image: torch.Tensor, masks: torch.Tensor, labels, names, scores=None) -> None:
    """The image with each mask in its own colour (instances of one class told apart) and its label."""
    rgb = image.permute(1, 2, 0).clamp(0, 1).numpy().copy()
    colours = plt.get_cmap("tab10")
    for k, mask in enumerate(masks.bool().numpy()):
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(colours(k % 10)[:3])
    ax.imshow(rgb)
    for k, (mask, label) in enumerate(zip(masks.bool().numpy(), labels)):
        ys, xs = np.nonzero(mask)
        if len(xs):
            ax.contour(mask, levels=[0.5], colors=[colours(k % 10)], linewidths=0.8)
            text = names[label] if label < len(names) else str(label)
            if scores is not None:
                text += f" {scores[k]:.2f}"
            ax.text(xs.min(), ys.min() - 1, text, color="white", fontsize=6, va="bottom",
                    bbox=dict(fc=colours(k % 10), ec="none", pad=0.5, alpha=0.8))


def plot_instances(images, preds, targets, names, path, score_threshold: float = 0.5, title: str = "") -> Path:
    """Two rows per group of images: the true instance masks, then the predicted ones above the threshold."""
    cols = min(4, len(images))
    groups = -(-len(images) // cols)
    fig, axes = plt.subplots(2 * groups, cols, figsize=(3.0 * cols, 6.0 * groups + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, pred, target) in enumerate(zip(images, preds, targets)):
        top, col = 2 * (i // cols), i % cols
        _overlay(axes[top, col], image, target["masks"], target["labels"].tolist(), names)
        keep = pred["scores"] >= score_threshold
        _overlay(axes[top + 1, col], image, pred["masks"][keep], pred["labels"][keep].tolist(), names,
                 pred["scores"][keep].tolist())
        axes[top, col].set_title("true", fontsize=7)
        axes[top + 1, col].set_title(f"predicted (score >= {score_threshold})", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
