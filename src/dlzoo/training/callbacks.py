"""Callbacks every family gets: the per-epoch history (for learning-curve plots) and a
checkpoint stamp that records which task and family wrote a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pandas as pd

from dlzoo.checkpoints import CHECKPOINT_KEY, stamp



class EpochHistory(L.Callback):
    """Collects epoch-level metrics (train/* and val/*) into rows, one per epoch."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")) and not key.endswith("_step"):
                v = float(value)
                row[key.removesuffix("_epoch")] = v if math.isfinite(v) else None
        self.rows.append(row)

    def save_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.rows).to_csv(path, index=False)
        return path


class CheckpointStamp(L.Callback):
    """Writes task/family/config into every checkpoint so evaluate can refuse a foreign one."""

    def __init__(self, task: str, family: str, experiment: str) -> None:
        self.meta = stamp(task, family, experiment)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(self.meta)
