"""scikit-learn's handwritten digits (1,797 real 8x8 greyscale images, 10 classes), offline.

`prepare` writes a fixed, seeded, stratified train/val/test split; the DataModule serves
(1, 8, 8) float images scaled to [0, 1], optionally with +-1 pixel random shifts in training
(the one augmentation that keeps an 8x8 digit a digit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dlzoo.data.common import SplitDataModule, require_prepared
from dlzoo.io import write_json
from dlzoo.errors import ConfigError

SPLITS = ("train", "val", "test")


def prepare(out_dir: str, val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("data.prepare.val_fraction and test_fraction must be in (0, 1) and sum below 1")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split_idx = {"train": train, "val": val, "test": test}
    np.savez_compressed(out / "digits.npz", **{f"{s}_x": images[i] for s, i in split_idx.items()},
                        **{f"{s}_y": labels[i] for s, i in split_idx.items()}, **{f"{s}_index": i for s, i in split_idx.items()})
    summary = {f"n_{s}": int(len(i)) for s, i in split_idx.items()}
    summary["class_counts_test"] = np.bincount(labels[test], minlength=10).tolist()
    write_json(out / "summary.json", summary)
    return summary


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y (zero fill), one offset per image."""
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    rows = torch.randint(0, 2 * max_shift + 1, (n, 1)) + torch.arange(h)  # (n, h) source rows
    cols = torch.randint(0, 2 * max_shift + 1, (n, 1)) + torch.arange(w)  # (n, w) source cols
    return padded[
        torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
    ]


class DigitsDataModule(SplitDataModule):
    def __init__(self, data_dir: str, batch_size: int = 64, max_shift: int = 1, num_workers: int = 0):
        super().__init__(batch_size, num_workers)
        self.data_dir, self.max_shift = data_dir, max_shift

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data_dir = require_prepared(self.data_dir, "digits.npz")
        with np.load(data_dir / "digits.npz") as d:
            for split in SPLITS:
                x = torch.from_numpy(d[f"{split}_x"]).unsqueeze(1)
                self.datasets[split] = TensorDataset(x, torch.from_numpy(d[f"{split}_y"]))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training and self.max_shift > 0:
            x, y = batch
            return random_shift(x, self.max_shift), y
        return batch
