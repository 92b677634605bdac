"""Plots people would rather look at than read; all written as PNG files for MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

from dlzoo.plotting import plt, save_figure


def plot_forecast(t, truth, predictions: dict, path: str | Path, title: str = "", history=None) -> Path:
    """The held-out part of a series with each model's one-step-ahead predictions on top."""
    fig, ax = plt.subplots(figsize=(10, 4))
    if history is not None:
        ax.plot(history[0], history[1], color="0.7", lw=1, label="training part")
    ax.plot(t, truth, color="black", lw=1.5, label="truth (held out)")
    for name, pred in predictions.items():
        ax.plot(t, pred, lw=1.2, label=name, ls="-" if name == "model" else "--")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_bar(labels, values, path: str | Path, title: str = "", ylabel: str = "", ylim=None) -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels)), 3.5))
    ax.bar(range(len(labels)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)), [str(x) for x in labels])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_confusion_matrix(confusion, path: str | Path, labels=None, title: str = "") -> Path:
    import numpy as np

    confusion = np.asarray(confusion)
    labels = labels if labels is not None else list(range(len(confusion)))
    fig, ax = plt.subplots(figsize=(0.55 * len(labels) + 2, 0.55 * len(labels) + 1.5))
    ax.imshow(confusion, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if confusion[i, j]:
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center",
                        color="white" if confusion[i, j] > confusion.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_image_grid(images, titles, path: str | Path, cols: int = 8, cmap: str = "gray_r") -> Path:
    """Small images (N, H, W) in a grid with a caption each (misclassified digits, samples, ...)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    return save_figure(fig, path)


def plot_latent_map(latents, labels, path: str | Path, title: str = "posterior means of the test set") -> Path:
    """2-D map of latent codes coloured by class (first two principal components when dim > 2)."""
    import numpy as np

    z = np.asarray(latents, dtype=np.float64)
    if z.shape[1] > 2:
        z = z - z.mean(axis=0)
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        z = z @ vt[:2].T
        title += " (PCA)"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    scatter = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=8)
    ax.legend(*scatter.legend_elements(), fontsize=7, title="digit", loc="best")
    ax.set_title(title)
    return save_figure(fig, path)


def _japanese_font() -> str | None:
    """IPAexGothic from the japanize-matplotlib wheel (matplotlib's own fonts have no Japanese glyphs)."""
    from importlib.util import find_spec

    spec = find_spec("japanize_matplotlib")
    if spec is None or spec.origin is None:
        return None
    font = Path(spec.origin).parent / "fonts" / "ipaexg.ttf"
    if not font.is_file():
        return None
    from matplotlib import font_manager

    font_manager.fontManager.addfont(str(font))
    return font_manager.FontProperties(fname=str(font)).get_name()


def plot_attention(weights, source_tokens, target_tokens, path: str | Path, title: str = "") -> Path:
    """Heat-map of decoder attention: one row per generated token, one column per source token."""
    font = _japanese_font()
    fig, ax = plt.subplots(figsize=(0.45 * len(source_tokens) + 2, 0.4 * len(target_tokens) + 1.5))
    ax.imshow(weights[: len(target_tokens), : len(source_tokens)], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=60, ha="right", fontfamily=font)
    ax.set_yticks(range(len(target_tokens)), target_tokens, fontfamily=font)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    ax.set_title(title or "attention")
    return save_figure(fig, path)
