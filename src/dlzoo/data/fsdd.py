"""Free Spoken Digit Dataset (data/fsdd/recordings: 3,000 mono 8 kHz WAVs, `{digit}_{speaker}_{index}.wav`).

`prepare` reads every WAV with scipy, scales each recording to a peak of `peak`, keeps its central
`n_samples` (shorter ones are padded with silence, and their true length is kept so no metric counts the
padding) and mu-law encodes it to 256 levels. Splits follow the dataset's convention: takes 0-4 of each
speaker x digit are test (300 recordings); validation is `val_per_class` seeded takes of every speaker x
digit drawn from the remaining train takes, never from test.

The DataModule serves, per recording, `(x, target)`: `x` is `[digit, speaker, c_-1, c_0, ..., c_T-2]` (the
global conditioning rides in front of the codes shifted by one, so one long tensor is the whole network input)
and `target` is `c_0 ... c_T-1`, with -1 where the recording has ended. Training draws one random crop of
`crop_len` samples per recording per epoch; validation and test use whole recordings.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dlzoo.data.common import SplitDataModule, require_prepared, require_raw
from dlzoo.errors import ConfigError, DataError
from dlzoo.io import read_json, write_json

SPLITS = ("train", "val", "test")
SAMPLE_RATE = 8000
N_DIGITS = 10
NAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)\.wav")
IGNORE = -1  # target of a padded position: cross-entropy's ignore_index


def mu_law_encode(x: np.ndarray, levels: int = 256) -> np.ndarray:
    """[-1, 1] floats -> integer codes 0..levels-1 (ITU-T G.711 companding with mu = levels - 1)."""
    mu = levels - 1
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.clip(np.floor((y + 1) / 2 * mu + 0.5), 0, mu).astype(np.int64)


def mu_law_decode(codes, levels: int = 256):
    """Integer codes -> [-1, 1] floats (numpy or torch)."""
    mu = levels - 1
    y = 2 * codes / mu - 1
    lib = torch if isinstance(codes, torch.Tensor) else np
    return lib.sign(y) * ((1 + mu) ** lib.abs(y) - 1) / mu


SILENCE = int(mu_law_encode(np.zeros(1))[0])  # the code of 0.0: what the network sees before a recording starts


def read_recording(path: Path) -> np.ndarray:
    """One WAV as float64 samples, or a one-line DataError naming the file."""
    from scipy.io import wavfile

    try:
        rate, samples = wavfile.read(path)
    except Exception as exc:  # scipy raises ValueError, EOFError, struct.error... for damaged files
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable WAV file ({reason})") from None
    if rate != SAMPLE_RATE:
        raise DataError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE} Hz")
    if samples.ndim != 1:
        raise DataError(f"{path}: {samples.shape[1]} channels, expected mono")
    samples = samples.astype(np.float64) - (128.0 if samples.dtype == np.uint8 else 0.0)  # 8-bit WAV is unsigned
    if len(samples) == 0 or not np.abs(samples).max() > 0:
        raise DataError(f"{path}: empty or silent recording")
    return samples


def list_recordings(raw_dir: Path) -> list[tuple[Path, int, str, int]]:
    """(path, digit, speaker, take) of every file in `raw_dir`; any other file name is an error naming it."""
    files = sorted(p for p in raw_dir.iterdir() if not p.name.startswith("."))
    if not files:
        raise DataError(f"{raw_dir}: no recordings (expected {{digit}}_{{speaker}}_{{index}}.wav files)")
    found = []
    for path in files:
        match = NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            raise DataError(f"{path}: file name is not {{digit}}_{{speaker}}_{{index}}.wav")
        found.append((path, int(match[1]), match[2], int(match[3])))
    return found


def fit_length(samples: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """The central `n` samples of a longer recording, or a shorter one zero-padded at the end; and the
    number of real samples kept."""
    if len(samples) >= n:
        start = (len(samples) - n) // 2
        return samples[start : start + n], n
    return np.pad(samples, (0, n - len(samples))), len(samples)


def prepare(out_dir: str, raw_dir: str = "data/fsdd/recordings", n_samples: int = 4096, peak: float = 1.0,
            test_takes: int = 5, val_per_class: int = 2, seed: int = 0) -> dict:
    if not 0 < peak <= 1:
        raise ConfigError(f"data.prepare.peak must be in (0, 1], got {peak}")
    raw = require_raw(raw_dir)
    if not raw.is_dir():
        raise DataError(f"{raw}: not a folder of recordings")
    recordings = list_recordings(raw)
    speakers = sorted({speaker for _, _, speaker, _ in recordings})
    codes = np.empty((len(recordings), n_samples), dtype=np.uint8)
    lengths, raw_lengths = np.empty(len(recordings), np.int64), np.empty(len(recordings), np.int64)
    for i, (path, *_) in enumerate(recordings):
        samples = read_recording(path)
        raw_lengths[i] = len(samples)
        fitted, lengths[i] = fit_length(samples / np.abs(samples).max() * peak, n_samples)
        codes[i] = mu_law_encode(fitted)
        codes[i, lengths[i]:] = SILENCE
    digits = np.array([d for _, d, _, _ in recordings])
    speaker_ids = np.array([speakers.index(s) for _, _, s, _ in recordings])
    takes = np.array([t for *_, t in recordings])

    # Official split by take; validation: `val_per_class` seeded train takes of every (speaker, digit).
    split = np.where(takes < test_takes, "test", "train").astype(object)
    rng = np.random.default_rng(seed)
    for key in sorted(set(zip(speaker_ids.tolist(), digits.tolist()))):
        pool = np.flatnonzero((split == "train") & (speaker_ids == key[0]) & (digits == key[1]))
        if len(pool) <= val_per_class:
            raise DataError(f"{raw}: speaker {speakers[key[0]]} digit {key[1]} has {len(pool)} train takes, "
                            f"too few to hold out data.prepare.val_per_class={val_per_class}")
        split[rng.choice(pool, size=val_per_class, replace=False)] = "val"
    if not (split == "test").any():
        raise DataError(f"{raw}: no test takes (index < {test_takes})")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for s in SPLITS:
        idx = np.flatnonzero(split == s)
        arrays.update({f"{s}_codes": codes[idx], f"{s}_lengths": lengths[idx], f"{s}_digits": digits[idx],
                       f"{s}_speakers": speaker_ids[idx], f"{s}_takes": takes[idx]})
    np.savez_compressed(out / "fsdd.npz", **arrays)
    summary = {f"n_{s}": int((split == s).sum()) for s in SPLITS}
    summary.update(speakers=speakers, sample_rate=SAMPLE_RATE, n_samples=n_samples, silence_code=SILENCE,
                   n_trimmed=int((raw_lengths > n_samples).sum()), n_padded=int((raw_lengths < n_samples).sum()),
                   mean_raw_length=float(raw_lengths.mean()))
    write_json(out / "summary.json", summary)
    return summary


class Recordings(Dataset):
    """Whole recordings (`crop_len=None`) or one random crop of `crop_len` samples per recording."""

    def __init__(self, codes, lengths, digits, speakers, crop_len: int | None = None):
        self.codes = torch.from_numpy(codes.astype(np.int64))
        self.lengths, self.digits, self.speakers = lengths, digits, speakers
        self.crop_len = crop_len

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int):
        length = int(self.lengths[i])
        n = self.crop_len or self.codes.shape[1]
        # the global RNG, seeded by the train stage, draws the crop: the same seed gives the same crops
        start = int(torch.randint(0, max(length - n, 0) + 1, ())) if self.crop_len else 0
        padded = torch.cat([torch.tensor([SILENCE]), self.codes[i], torch.full((n,), SILENCE)])
        window = padded[start : start + n + 1]  # the sample before the crop, then the crop
        target = window[1:].clone()
        target[max(length - start, 0):] = IGNORE
        header = torch.tensor([int(self.digits[i]), int(self.speakers[i])])
        return torch.cat([header, window[:-1]]), target


class FSDDDataModule(SplitDataModule):
    def __init__(self, data_dir: str, batch_size: int = 16, eval_batch_size: int = 50, crop_len: int = 2048,
                 max_eval_recordings: int | None = None, num_workers: int = 0):
        super().__init__(batch_size, num_workers)
        self.data_dir, self.eval_batch_size, self.crop_len = data_dir, eval_batch_size, crop_len
        self.max_eval_recordings = max_eval_recordings
        self.arrays: dict[str, dict[str, np.ndarray]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data_dir = require_prepared(self.data_dir, "fsdd.npz", "summary.json")
        self.summary = read_json(data_dir / "summary.json")
        with np.load(data_dir / "fsdd.npz") as d:
            for split in SPLITS:
                a = {k: d[f"{split}_{k}"] for k in ("codes", "lengths", "digits", "speakers", "takes")}
                if split != "train" and self.max_eval_recordings is not None:  # smoke: a few evaluation recordings
                    a = {k: v[: self.max_eval_recordings] for k, v in a.items()}
                self.arrays[split] = a
                crop = self.crop_len if split == "train" else None
                self.datasets[split] = Recordings(a["codes"], a["lengths"], a["digits"], a["speakers"], crop)

    @property
    def speakers(self) -> list[str]:
        return self.summary["speakers"]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        # whole recordings are evaluated in larger batches than training crops are
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers)
