"""Image-classification metrics on the held-out split: accuracy, per-class recall, confusion matrix,
misclassified examples, and the model's cost (parameters, MACs, CPU latency). Each test example's true and
predicted class also go to a table (`confusion.csv`) that `dvc plots` draws as a confusion matrix."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from dlzoo.evaluation.plots import plot_confusion_matrix, plot_image_grid
from dlzoo.evaluation.profiling import profile_classifier


CONFUSION_TABLE = "confusion.csv"   # in the evaluate stage's report folder: the top-level `dvc plots` read it there


@torch.no_grad()
def predict(model, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model.eval()
    xs, ys, preds = [], [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        preds.append(model(x).argmax(dim=1))
    return torch.cat(xs), torch.cat(ys), torch.cat(preds)


def evaluate(module, datamodule, out_dir: str | Path, num_classes: int = 10, latency_threads: int = 1) -> tuple[dict, list[Path]]:
    datamodule.setup("test")
    x, y, pred = predict(module, datamodule.test_dataloader())
    confusion = multiclass_confusion_matrix(pred, y, num_classes).numpy()
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    metrics = {
        "test/accuracy": float((pred == y).float().mean()),
        "test/error_count": int((pred != y).sum()),
        "test/min_class_recall": float(recall.min()),
        "test/num_examples": int(len(y)),
    }
    metrics.update(profile_classifier(module.net if hasattr(module, "net") else module, tuple(x.shape[1:]), threads=latency_threads))
    out_dir = Path(out_dir)
    files = [plot_confusion_matrix(confusion, out_dir / "confusion_matrix.png", title=f"test accuracy {metrics['test/accuracy']:.4f}")]
    files.append(write_predictions(y, pred, out_dir / CONFUSION_TABLE))
    wrong = (pred != y).nonzero().flatten()[:32]
    if len(wrong):
        titles = [f"true {int(y[i])} / pred {int(pred[i])}" for i in wrong]
        files.append(plot_image_grid(x[wrong, 0].numpy(), titles, out_dir / "misclassified.png"))
    return metrics, files


def write_predictions(y: torch.Tensor, pred: torch.Tensor, path: Path) -> Path:
    """One row (actual, predicted) per test example, in test order: DVC's `confusion` template counts them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["actual", "predicted"])
        rows.writerows(zip(y.tolist(), pred.tolist()))
    return path
