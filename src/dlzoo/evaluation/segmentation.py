"""Semantic-segmentation metrics on the held-out split: mean IoU (Jaccard index, background
included), IoU per class, pixel accuracy; plots of predicted masks over the images and of IoU per class.

`test/miou` is torchmetrics' macro average over the classes that occur in the test masks or the
predictions (the same definition as `val/miou` during training); `test/iou/<class>` is 0 for a
class that occurs in neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from dlzoo.errors import ConfigError
from dlzoo.evaluation.ood import with_ood
from dlzoo.evaluation.plots import plot_bar


def class_colors(num_classes: int) -> np.ndarray:
    """RGB in [0, 1] per label: black for background (never drawn), then tab10 from its second colour."""
    import matplotlib

    tab = matplotlib.colormaps["tab10"].colors
    return np.array([(0.0, 0.0, 0.0)] + [tab[(i + 1) % 10] for i in range(num_classes - 1)])


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """A mask drawn over its image (H, W, 3) in [0, 1]: every labelled pixel in its class's solid
    colour, the background as the image in dimmed grey (so the shapes' own colours do not mix in)."""
    grey = image.mean(axis=-1, keepdims=True)
    out = np.repeat(0.25 + 0.5 * grey, 3, axis=-1)
    fg = mask > 0
    out[fg] = colors[mask[fg]]
    return out


def plot_segmentations(images, masks, preds, class_names, path: str | Path) -> Path:
    """One row per example: image | ground truth over it | prediction over it, with a colour key."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = class_colors(len(class_names))
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n + 0.4), squeeze=False)
    for row, (image, mask, pred) in zip(axes, zip(images, masks, preds)):
        accuracy = float((mask == pred).mean())
        for ax, picture, title in zip(row, (image, overlay(image, mask, colors), overlay(image, pred, colors)),
                                      ("image", "ground truth", f"prediction ({accuracy:.1%} px)")):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [Patch(color=colors[i], label=name) for i, name in enumerate(class_names) if i > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / (2.2 * n + 0.4), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(module, datamodule, out_dir: str | Path, num_classes: int = 4, class_names=None,
             n_examples: int = 8, ood_dir: str | None = None, ood_min_kept: float = 0.85,
             max_images: int | None = None) -> tuple[dict, list[Path]]:
    """`ood_dir`: also score that COCO folder's test split (`ood/...`, see dlzoo.evaluation.ood)."""
    def score(module, datamodule, out_dir, split):
        return _evaluate(module, datamodule, out_dir, num_classes, class_names, n_examples, split)

    return with_ood(score, module, datamodule, out_dir, ood_dir, ("test/miou",), ood_min_kept, max_images)


@torch.no_grad()
def _evaluate(module, datamodule, out_dir, num_classes, class_names, n_examples,
              split: str = "test") -> tuple[dict, list[Path]]:
    datamodule.setup("test")
    if class_names is None:
        class_names = getattr(datamodule, "category_names", None) or [f"class_{i}" for i in range(num_classes)]
    class_names = list(class_names)
    if len(class_names) != num_classes:
        raise ConfigError(
            f"evaluator.num_classes={num_classes} but the data has {len(class_names)} classes "
            f"({', '.join(class_names)}): set model.num_classes and evaluator.num_classes to match"
        )
    module.eval()
    miou = MulticlassJaccardIndex(num_classes, average="macro")
    per_class = MulticlassJaccardIndex(num_classes, average="none")
    correct = total = n_images = 0
    examples: list[tuple] = []
    for x, y in datamodule.test_dataloader():
        pred = module(x).argmax(dim=1)
        miou.update(pred, y)
        per_class.update(pred, y)
        correct += int((pred == y).sum())
        total += y.numel()
        n_images += len(y)
        for i in range(min(len(x), n_examples - len(examples))):  # the first n_examples test images
            examples.append((x[i].permute(1, 2, 0).numpy(), y[i].numpy(), pred[i].numpy()))
    ious = per_class.compute().tolist()
    metrics = {
        "test/miou": float(miou.compute()),
        **{f"test/iou/{name}": float(v) for name, v in zip(class_names, ious)},
        "test/pixel_accuracy": correct / max(total, 1),
        "test/num_examples": n_images,
    }
    out_dir = Path(out_dir)
    files = [
        plot_segmentations(*zip(*examples), class_names, out_dir / "segmentations.png"),
        plot_bar(class_names, ious, out_dir / "iou_per_class.png", title=f"{split} mIoU {metrics['test/miou']:.4f}",
                 ylabel="IoU", ylim=(0, 1)),
    ]
    return metrics, files

