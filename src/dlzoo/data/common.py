"""Helpers shared by the dataset modules: reading prepared stage outputs with clear errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from dlzoo.errors import DataError


def require_prepared(data_dir: str | Path, *names: str) -> Path:
    """Return `data_dir` after checking its prepare stage has written `names` there."""
    data_dir = Path(data_dir)
    missing = [n for n in names if not (data_dir / n).exists()]
    if missing:
        raise DataError(
            f"prepared data missing in {data_dir}/ ({', '.join(missing)}): "
            f"run `dvc repro` (or the matching `prepare_...` stage) first"
        )
    return data_dir


def require_raw(path: str | Path) -> Path:
    """Return `path` of DVC-tracked raw data, or tell the user to `dvc pull` it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"raw data {path} is missing: run `dvc pull` (or `make data`) to restore data/")
    return path


class SplitDataModule(L.LightningDataModule):
    """A DataModule whose `setup` fills `self.datasets[split]` for train/val/test; the loaders
    (shuffled for train only) come from here. `collate_fn` may be set by subclasses."""

    collate_fn = None

    def __init__(self, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: dict = {}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=self.collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
