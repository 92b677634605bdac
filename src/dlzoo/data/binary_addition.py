"""Binary addition: the classic exercise for back-propagation through time.

Each example adds two `num_bits`-bit integers a + b. The network reads the bits of a and b
least-significant first, one pair per time step, and must emit the sum's bit at each step, so
it has to carry a 1 through its hidden state. There are `num_bits + 1` steps: the last reads
(0, 0) and emits the final carry.

`prepare` splits *all* 2^(2*num_bits) (a, b) pairs (or a seeded sample of them for large
widths) into disjoint train/val/test sets, so the test pairs are never seen in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dlzoo.data.common import SplitDataModule, require_prepared
from dlzoo.io import read_json, write_json
from dlzoo.errors import ConfigError

SPLITS = ("train", "val", "test")


def to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Integers -> (n, width) array of bits, least-significant first."""
    return ((values[:, None] >> np.arange(width)) & 1).astype(np.float32)


def from_bits(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """(n, width) bits, least-significant first -> integers."""
    bits = np.asarray(bits, dtype=np.int64)
    return (bits << np.arange(bits.shape[1])).sum(axis=1)


def encode(a: np.ndarray, b: np.ndarray, num_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) -> inputs (n, num_bits+1, 2) and targets (n, num_bits+1) of the sum's bits."""
    steps = num_bits + 1
    x = np.stack([to_bits(a, steps), to_bits(b, steps)], axis=-1)
    y = to_bits(a + b, steps)
    return x, y


def prepare(
    out_dir: str,
    num_bits: int = 8,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_pairs: int = 200_000,
    seed: int = 0,
) -> dict:
    """Write disjoint train/val/test (a, b) pairs to `out_dir/pairs.npz`; return a summary."""
    if not 1 <= num_bits <= 31:
        raise ConfigError(f"data.prepare.num_bits must be in [1, 31], got {num_bits}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("data.prepare.val_fraction and test_fraction must be in (0, 1) and sum below 1")
    rng = np.random.default_rng(seed)
    n_all = 2 ** (2 * num_bits)
    if n_all <= max_pairs:
        codes = rng.permutation(n_all)  # every pair exactly once
    else:  # too many to enumerate: sample distinct pair codes
        codes = np.unique(rng.integers(0, n_all, size=int(max_pairs * 1.1), dtype=np.int64))
        codes = rng.permutation(codes)[:max_pairs]
    a, b = codes >> num_bits, codes & ((1 << num_bits) - 1)
    n_test, n_val = int(len(codes) * test_fraction), int(len(codes) * val_fraction)
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, len(codes))}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (lo, hi) in bounds.items():
        arrays[f"{split}_a"], arrays[f"{split}_b"] = a[lo:hi], b[lo:hi]
    np.savez_compressed(out / "pairs.npz", **arrays)
    summary = {"num_bits": num_bits, **{f"n_{s}": int(hi - lo) for s, (lo, hi) in bounds.items()}}
    write_json(out / "summary.json", summary)
    return summary


class BinaryAdditionDataModule(SplitDataModule):
    def __init__(self, data_dir: str, batch_size: int = 64, num_workers: int = 0):
        super().__init__(batch_size, num_workers)
        self.data_dir = data_dir

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data_dir = require_prepared(self.data_dir, "pairs.npz", "summary.json")
        self.num_bits = read_json(data_dir / "summary.json")["num_bits"]
        with np.load(data_dir / "pairs.npz") as pairs:
            for split in SPLITS:
                x, y = encode(pairs[f"{split}_a"], pairs[f"{split}_b"], self.num_bits)
                self.datasets[split] = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
