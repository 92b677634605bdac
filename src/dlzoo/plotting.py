"""Saving figures, and the learning curve every runner gets: a neutral home for plotting, so training,
evaluation and compression all draw the same way without importing each other."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(history_csv: str | Path, path: str | Path, title: str = "", x: str = "epoch") -> Path:
    """One panel per metric name (loss, accuracy, return, ...), train and val curves against `x`."""
    import pandas as pd

    df = pd.read_csv(history_csv)
    names = sorted({c.split("/", 1)[1] for c in df.columns if "/" in c and not c.endswith("grad_norm")})
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.5 * max(len(names), 1), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split in ("train", "val"):
            col = f"{split}/{name}"
            if col in df:
                ax.plot(df[x], df[col], marker=".", label=split)
        ax.set_xlabel(x)
        ax.set_title(name)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)
