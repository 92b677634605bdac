"""Univariate time series for one-step-ahead forecasting: a noisy sine wave and yearly sunspots.

`prepare_*` write `series.csv` (columns `t`, `value`, `split`), the last `test_fraction` of the
series in time order marked `test`. The DataModule cuts sliding windows: `window` past values ->
the next value. Validation is the tail of the training part, so nothing after a target's time
is ever used to fit it, and the test part is never seen in training. Values are standardised
with the training part's mean and standard deviation only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from dlzoo.data.common import SplitDataModule, require_prepared
from dlzoo.io import write_json
from dlzoo.errors import ConfigError, DataError


def _write_series(out_dir: str, t: np.ndarray, values: np.ndarray, test_fraction: float, name: str) -> dict:
    if not 0 < test_fraction < 0.5:
        raise ConfigError(f"data.prepare.test_fraction must be in (0, 0.5), got {test_fraction}")
    n_test = int(round(len(values) * test_fraction))
    split = np.where(np.arange(len(values)) < len(values) - n_test, "train", "test")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"t": t, "value": values, "split": split}).to_csv(out / "series.csv", index=False)
    summary = {"name": name, "n_points": len(values), "n_train": int(len(values) - n_test), "n_test": n_test}
    write_json(out / "summary.json", summary)
    return summary


def prepare_sine(
    out_dir: str, n_points: int = 2000, period: float = 50.0, noise_std: float = 0.2,
    test_fraction: float = 0.2, seed: int = 0,
) -> dict:
    """The classic exercise: sin(2*pi*t/period) plus Gaussian noise (seeded)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_points)
    values = np.sin(2 * np.pi * t / period) + rng.normal(0.0, noise_std, n_points)
    return _write_series(out_dir, t, values.astype(np.float64), test_fraction, "sine")


def prepare_sunspots(out_dir: str, test_fraction: float = 0.2) -> dict:
    """Yearly mean sunspot numbers 1700-2008, as shipped with statsmodels (real data, offline)."""
    from statsmodels.datasets import sunspots

    df = sunspots.load_pandas().data
    return _write_series(out_dir, df["YEAR"].to_numpy(), df["SUNACTIVITY"].to_numpy(np.float64), test_fraction, "sunspots")


def load_series(data_dir: str | Path) -> pd.DataFrame:
    data_dir = require_prepared(data_dir, "series.csv")
    df = pd.read_csv(data_dir / "series.csv")
    if df.empty or not {"t", "value", "split"} <= set(df.columns):
        raise DataError(f"{data_dir / 'series.csv'} is empty or lacks the columns t, value, split")
    if df["value"].isna().any():
        raise DataError(f"{data_dir / 'series.csv'} has missing values; fill or drop them in the prepare step")
    return df


def make_windows(values: np.ndarray, window: int, targets: range) -> tuple[np.ndarray, np.ndarray]:
    """For each target index i: inputs values[i-window:i], target values[i]."""
    if targets.start < window:
        raise ConfigError(f"window {window} is longer than the history before the first target ({targets.start})")
    x = np.stack([values[i - window : i] for i in targets]).astype(np.float32)
    y = values[list(targets)].astype(np.float32)
    return x[..., None], y


class ForecastDataModule(SplitDataModule):
    def __init__(
        self, data_dir: str, window: int = 20, val_fraction: float = 0.15, batch_size: int = 32,
        season_length: int | None = None, num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        if window < 1:
            raise ConfigError(f"data.module.window must be >= 1, got {window}")
        self.data_dir, self.window, self.val_fraction, self.season_length = data_dir, window, val_fraction, season_length

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        df = load_series(self.data_dir)
        self.t = df["t"].to_numpy()
        self.values = df["value"].to_numpy(np.float64)
        self.n_train = int((df["split"] == "train").sum())
        n_fit = self.n_train - int(round(self.n_train * self.val_fraction))
        # Standardise with statistics of the training part only (no peeking at the test part).
        self.mean, self.std = float(self.values[: self.n_train].mean()), float(self.values[: self.n_train].std())
        z = (self.values - self.mean) / self.std
        self.ranges = {
            "train": range(self.window, n_fit),
            "val": range(n_fit, self.n_train),
            "test": range(self.n_train, len(z)),
        }
        for split, targets in self.ranges.items():
            if len(targets) == 0:
                raise DataError(f"the {split} split of {self.data_dir} has no windows (series too short for window {self.window})")
            x, y = make_windows(z, self.window, targets)
            self.datasets[split] = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z) * self.std + self.mean
