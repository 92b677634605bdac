"""Plots people would rather look at than read; all written as PNG files for MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(history_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """One panel per metric name (loss, accuracy, ...), train and val curves against epoch."""
    df = pd.read_csv(history_csv)
    names = sorted({c.split("/", 1)[1] for c in df.columns if "/" in c and not c.endswith("grad_norm")})
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.5 * max(len(names), 1), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split in ("train", "val"):
            col = f"{split}/{name}"
            if col in df:
                ax.plot(df["epoch"], df[col], marker=".", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


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
    return _save(fig, path)


def plot_bar(labels, values, path: str | Path, title: str = "", ylabel: str = "", ylim=None) -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels)), 3.5))
    ax.bar([str(x) for x in labels], values, color="tab:blue")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
