"""Spoken-digit classification on the prepared FSDD recordings (`prepare_fsdd`, dlzoo/data/fsdd.py).

Each example is `(waveform, digit)`: the prepared mu-law codes decoded to a float waveform in [-1, 1],
shape (1, n_samples), so a classifier hears what the generator produces. Two splits of the same prepared
recordings:

- the official split (`holdout_speaker=None`): takes 0-4 of every speaker x digit are test, validation is
  the prepare stage's held-out train takes;
- leave-one-speaker-out (`holdout_speaker=<name>`): every recording of that speaker is test; the other
  speakers' recordings train, except their prepared validation takes, which validate. No recording of the
  held-out speaker is seen before the test.

Training may shift each recording in time by up to `max_shift` samples (circularly within the padded clip),
so the classifier does not learn where in the 0.5 s window a digit starts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from dlzoo.data.common import require_prepared
from dlzoo.data.fsdd import SPLITS, FSDDDataModule, mu_law_decode
from dlzoo.errors import ConfigError
from dlzoo.io import read_json


class Clips(Dataset):
    def __init__(self, waves: torch.Tensor, digits: np.ndarray, max_shift: int = 0):
        self.waves, self.digits, self.max_shift = waves, torch.from_numpy(digits.astype(np.int64)), max_shift

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int):
        wave = self.waves[i]
        if self.max_shift:
            # the global RNG, seeded by the train stage, draws the shift: the same seed gives the same shifts
            wave = torch.roll(wave, int(torch.randint(-self.max_shift, self.max_shift + 1, ())), dims=-1)
        return wave, self.digits[i]


def decode(codes: np.ndarray) -> torch.Tensor:
    """uint8 mu-law codes (N, T) -> float32 waveforms (N, 1, T)."""
    return torch.from_numpy(mu_law_decode(codes.astype(np.float64)).astype(np.float32))[:, None, :]


class FSDDClassificationDataModule(FSDDDataModule):
    """The generator's data module (its loaders, `speakers`) serving whole clips and digits instead of codes."""

    def __init__(self, data_dir: str, batch_size: int = 32, eval_batch_size: int = 100, holdout_speaker: str | None = None,
                 max_shift: int = 0, max_eval_recordings: int | None = None, num_workers: int = 0):
        super().__init__(data_dir, batch_size, eval_batch_size, crop_len=None, max_eval_recordings=max_eval_recordings,
                         num_workers=num_workers)
        self.holdout_speaker, self.max_shift = holdout_speaker, max_shift
        self.settings = dict(data_dir=data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size, max_shift=max_shift,
                             max_eval_recordings=max_eval_recordings, num_workers=num_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data_dir = require_prepared(self.data_dir, "fsdd.npz", "summary.json")
        self.summary = read_json(data_dir / "summary.json")
        with np.load(data_dir / "fsdd.npz") as d:
            prepared = {s: {k: d[f"{s}_{k}"] for k in ("codes", "digits", "speakers")} for s in SPLITS}
        if self.holdout_speaker is None:
            self.arrays = prepared
        else:
            if self.holdout_speaker not in self.speakers:
                raise ConfigError(f"data.module.holdout_speaker={self.holdout_speaker!r} is not one of the "
                                  f"prepared speakers {self.speakers}")
            k = self.speakers.index(self.holdout_speaker)
            every = {key: np.concatenate([prepared[s][key] for s in SPLITS]) for key in ("codes", "digits", "speakers")}
            origin = np.concatenate([np.full(len(prepared[s]["digits"]), s) for s in SPLITS])
            masks = {"test": every["speakers"] == k,
                     "val": (every["speakers"] != k) & (origin == "val"),
                     "train": (every["speakers"] != k) & (origin != "val")}
            self.arrays = {s: {key: v[m] for key, v in every.items()} for s, m in masks.items()}
        for split in SPLITS:
            a = self.arrays[split]
            if split != "train" and self.max_eval_recordings is not None:  # smoke: a few evaluation recordings
                a = self.arrays[split] = {key: v[: self.max_eval_recordings] for key, v in a.items()}
            self.datasets[split] = Clips(decode(a["codes"]), a["digits"], self.max_shift if split == "train" else 0)

    def with_holdout(self, speaker: str | None) -> "FSDDClassificationDataModule":
        """The same data module on another split: the leave-one-speaker-out fold of `speaker` (None: official)."""
        return FSDDClassificationDataModule(holdout_speaker=speaker, **self.settings)
