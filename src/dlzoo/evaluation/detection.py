"""Object-detection metrics on the held-out split: COCO mAP@[.5:.95], mAP@.5, mAP@.75 and AP per
class (pycocotools, through torchmetrics), each class's precision-recall curve at IoU 0.5 as a table (`pr_curve.csv`,
drawn by `dvc plots` with `.dvc/plots/precision_recall.json`), and a grid of test images with predicted vs true boxes.

The test split is whatever `data.module` says: the prepared shapes, or any COCO annotation file
and image folder (`data.module.test_json=... data.module.test_images=...`). Crowd annotations
(iscrowd=1) count as COCOeval counts them: a detection on a crowd region is neither a true nor a
false positive, and a crowd region is never an object to recall (see `dlzoo.models.detection.metric_target`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert, box_iou

from dlzoo.evaluation.ood import with_ood
from dlzoo.models.detection import metric_target
from dlzoo.plotting import plt, save_figure


PR_CURVE = "pr_curve.csv"   # in the evaluate stage's report folder: the top-level `dvc plots` read it there


def coco_box_iou(a_xywh: torch.Tensor, b_xywh: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] of COCO boxes [x, y, w, h] (top-left corner, width, height; continuous
    coordinates, no +1 pixel), by converting to [x1, y1, x2, y2] as the models predict them."""
    return box_iou(box_convert(a_xywh, "xywh", "xyxy"), box_convert(b_xywh, "xywh", "xyxy"))


@torch.no_grad()
def predict(module, loader) -> tuple[list, list, list]:
    """Images, predictions and targets of a whole split (eval mode, no gradients); each target as
    COCO evaluation takes it: objects and crowd regions, told apart by `iscrowd`."""
    module.eval()
    images, preds, targets = [], [], []
    for x, y in loader:
        images.extend(x)
        preds.extend(module(x))
        targets.extend(metric_target(t) for t in y)
    return images, preds, targets


def evaluate(module, datamodule, out_dir: str | Path, class_names: list[str] | None = None,
             score_threshold: float = 0.5, num_plotted: int = 8, ood_dir: str | None = None,
             ood_min_kept: float = 0.85, max_images: int | None = None) -> tuple[dict, list[Path]]:
    """`score_threshold` only filters the boxes drawn: mAP uses every detection (it sweeps all thresholds).
    `ood_dir`: also score that COCO folder's test split (`ood/...`, see dlzoo.evaluation.ood)."""
    def score(module, datamodule, out_dir, split):
        return _evaluate(module, datamodule, out_dir, class_names, score_threshold, num_plotted, split)

    return with_ood(score, module, datamodule, out_dir, ood_dir, ("test/map_50", "test/map"), ood_min_kept, max_images)


def _evaluate(module, datamodule, out_dir, class_names, score_threshold, num_plotted,
              split: str = "test") -> tuple[dict, list[Path]]:
    datamodule.setup("test")
    images, preds, targets = predict(module, datamodule.test_dataloader())
    names = list(class_names) if class_names else datamodule.category_names  # index = label, 0 = background
    mean_ap = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", class_metrics=True,
                                   extended_summary=True)   # COCOeval's precision array, for the curves
    mean_ap.update(preds, targets)
    result = mean_ap.compute()
    metrics = {
        "test/map": float(result["map"]),
        "test/map_50": float(result["map_50"]),
        "test/map_75": float(result["map_75"]),
        "test/mar_100": float(result["mar_100"]),
        "test/num_examples": len(images),
        "test/num_objects": int(sum(int((t["iscrowd"] == 0).sum()) for t in targets)),  # crowds are not objects
    }
    # every class seen in predictions or ground truth; COCO gives -1 to one without ground truth
    for label, ap in zip(result["classes"].reshape(-1).tolist(), result["map_per_class"].reshape(-1).tolist()):
        metrics[f"test/ap/{names[label] if label < len(names) else label}"] = float(ap)
    out = Path(out_dir) / "detections.png"
    title = f"{split} mAP {metrics['test/map']:.3f}, mAP@.5 {metrics['test/map_50']:.3f}"
    table = write_pr_curves(result, names, mean_ap.iou_thresholds, Path(out_dir) / PR_CURVE)
    return metrics, [plot_detections(images[:num_plotted], preds, targets, names, out, score_threshold, title), table]


def write_pr_curves(result: dict, names: list[str], iou_thresholds: list[float], path: Path, iou: float = 0.5) -> Path:
    """Rows (class, recall, precision): each class's interpolated precision at COCO's 101 recall levels, at IoU
    `iou`, every object size, 100 detections per image (COCOeval's `eval['precision']` as torchmetrics returns it:
    IoU x recall x class x area x max-detections, classes in the order of `result['classes']`). A class without
    ground truth (COCO's -1) has no curve; precision is 0 at recall levels a class never reaches."""
    precision = result["precision"]
    labels = result["classes"].reshape(-1).tolist()
    levels = torch.linspace(0, 1, precision.shape[1])
    t = min(range(len(iou_thresholds)), key=lambda k: abs(iou_thresholds[k] - iou))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["class", "recall", "precision"])
        for k, label in enumerate(labels):
            curve = precision[t, :, k, 0, -1]
            if (curve < 0).all():
                continue
            name = names[label] if label < len(names) else str(label)
            rows.writerows([name, round(float(r), 2), round(float(p), 6)] for r, p in zip(levels, curve))
    return path


def plot_detections(images, preds, targets, names, path, score_threshold: float = 0.5, title: str = "") -> Path:
    """Each image with its true boxes (green, dashed), crowd regions (yellow, dotted) and predictions
    above the threshold (red, with score)."""
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, pred, target in zip(axes.flat, images, preds, targets):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        crowd = target.get("iscrowd", torch.zeros(len(target["boxes"]), dtype=torch.int64)).tolist()
        for (x0, y0, x1, y1), is_crowd in zip(target["boxes"].tolist(), crowd):
            ec, ls = ("yellow", ":") if is_crowd else ("lime", "--")
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=ec, lw=1.5, ls=ls))
        keep = pred["scores"] >= score_threshold
        shown = zip(pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(), pred["scores"][keep].tolist())
        for (x0, y0, x1, y1), label, score in shown:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
            ax.text(x0, y0 - 1, f"{names[label] if label < len(names) else label} {score:.2f}", color="white",
                    fontsize=6, va="bottom", bbox=dict(fc="red", ec="none", pad=0.5, alpha=0.8))
    fig.suptitle(f"{title}\ngreen dashed: ground truth, yellow dotted: crowd, red: predicted (score >= {score_threshold})",
                 fontsize=9)
    return save_figure(fig, path)
