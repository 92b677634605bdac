"""The four kinds of visual recognition on the same test images (DVC stage `report_shapes-four-tasks`):
image-level class, object detection, semantic segmentation and instance segmentation, side by side.

Each panel is a trained family of its task, loaded from its train stage's checkpoint (which families:
conf/four_tasks.yaml). The image-level class is the image's dominant shape, the category with the most
visible pixels; the project has no separate image classifier for the shapes, so it is read from the semantic
segmentation net's predicted pixels (most pixels of one class), and its accuracy over the whole test split,
with a 95% Wilson interval, is this report's own number. The other tasks' numbers are their evaluate stages'.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra import compose
from omegaconf import DictConfig
from statsmodels.stats.proportion import proportion_confint

from dlzoo.checkpoints import load_trained_module
from dlzoo.config import build, require_keys
from dlzoo.evaluation.instance import _overlay
from dlzoo.io import write_json
from dlzoo.plotting import plt, save_figure
from dlzoo.tracking import start_run

log = logging.getLogger(__name__)
TASKS = ("detection", "segmentation", "instance")


def dominant_class(masks: torch.Tensor) -> torch.Tensor:
    """[B, H, W] label maps (0 = background) -> [B] the label with the most pixels, 0 where none."""
    counts = torch.stack([torch.bincount(m.reshape(-1), minlength=int(masks.max()) + 1)[1:] for m in masks])
    return torch.where(counts.sum(1) > 0, counts.argmax(1) + 1, torch.zeros_like(counts[:, 0]))


def _family(experiment: str, profile: str) -> tuple[DictConfig, torch.nn.Module]:
    cfg = compose("config", overrides=[f"experiment={experiment}", f"profile={profile}"])
    model, _ = load_trained_module(cfg)
    return cfg, model


@torch.no_grad()
def four_tasks(cfg: DictConfig) -> dict:
    require_keys(cfg, "four_tasks")
    spec = cfg.four_tasks
    families = {task: _family(spec[task], cfg.profile_name) for task in TASKS}
    seg_cfg, seg_model = families["segmentation"]
    datamodule = build(seg_cfg.data.module, "data.module")  # the semantic masks of the shared test images
    datamodule.setup("test")
    true_class, pred_class, images, true_masks, pred_masks = [], [], [], [], []
    for x, y in datamodule.test_dataloader():
        logits = seg_model(x)
        pred = logits.argmax(1)
        true_class.append(dominant_class(y))
        pred_class.append(dominant_class(pred))
        if len(images) < spec.num_images:
            images.extend(x[: spec.num_images - len(images)])
            true_masks.extend(y[: spec.num_images - len(true_masks)])
            pred_masks.extend(pred[: spec.num_images - len(pred_masks)])
    true_class, pred_class = torch.cat(true_class), torch.cat(pred_class)
    correct, n = int((true_class == pred_class).sum()), len(true_class)
    low, high = proportion_confint(correct, n, alpha=0.05, method="wilson")
    metrics = {"test/dominant_shape_accuracy": correct / n, "test/dominant_shape_accuracy_ci_low": float(low),
               "test/dominant_shape_accuracy_ci_high": float(high), "test/num_examples": n}

    batch = torch.stack(images)
    detections = families["detection"][1](batch)
    instances = families["instance"][1](batch)
    names = datamodule.category_names
    out = Path(spec.out_dir) / "four_tasks.png"
    _plot(batch, true_class, pred_class, detections, true_masks, pred_masks, instances, names, spec, out)

    with start_run(cfg, "report"):
        import mlflow

        mlflow.log_params({f"four_tasks.{task}": spec[task] for task in TASKS})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out), "report")
    write_json(spec.metrics_file, metrics)  # last: a failed run leaves no numbers behind
    log.info("four tasks: dominant-shape accuracy %.4f [%.4f, %.4f] on %d test images", correct / n, low, high, n)
    return metrics


def _plot(batch, true_class, pred_class, detections, true_masks, pred_masks, instances, names, spec, path) -> Path:
    cmap = plt.get_cmap("tab10", len(names))
    rows = len(batch)
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3.0 * rows + 0.6), squeeze=False)
    titles = ("classification: dominant shape", f"detection ({spec.detection})",
              f"semantic segmentation ({spec.segmentation})", f"instance segmentation ({spec.instance})")
    for r, image in enumerate(batch):
        rgb = image.permute(1, 2, 0).clamp(0, 1).numpy()
        for ax in axes[r]:
            ax.axis("off")
            ax.imshow(rgb)
        ok = "right" if true_class[r] == pred_class[r] else "WRONG"
        axes[r, 0].text(2, 12, f"predicted: {names[pred_class[r]]}\ntrue: {names[true_class[r]]} ({ok})", fontsize=7,
                        color="white", va="top", bbox=dict(fc="black", ec="none", alpha=0.7))
        det = detections[r]
        keep = det["scores"] >= spec.score_threshold
        for (x0, y0, x1, y1), label, score in zip(det["boxes"][keep].tolist(), det["labels"][keep].tolist(),
                                                  det["scores"][keep].tolist()):
            axes[r, 1].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
            axes[r, 1].text(x0, y0 - 1, f"{names[label]} {score:.2f}", color="white", fontsize=6, va="bottom",
                            bbox=dict(fc="red", ec="none", pad=0.5, alpha=0.8))
        shown = np.ma.masked_equal(pred_masks[r].numpy(), 0)
        axes[r, 2].imshow(shown, cmap=cmap, vmin=0, vmax=len(names) - 1, alpha=0.6, interpolation="nearest")
        axes[r, 2].contour(true_masks[r].numpy() > 0, levels=[0.5], colors="white", linewidths=0.6)
        inst = instances[r]
        keep = inst["scores"] >= spec.score_threshold
        axes[r, 3].cla()
        axes[r, 3].axis("off")
        _overlay(axes[r, 3], image, inst["masks"][keep, 0] > 0.5, inst["labels"][keep].tolist(), names,
                 inst["scores"][keep].tolist())
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"the same test images, four tasks (boxes and instances with score >= {spec.score_threshold}; "
                 "semantic: predicted classes in colour, true outlines in white)", fontsize=9)
    return save_figure(fig, path)
