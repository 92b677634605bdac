"""Callbacks the Lightning runner adds: the per-epoch learning-curve row (handed to the pipeline's
RunContext, which prints and plots it) and the checkpoint stamp that records which task and family
wrote a checkpoint."""

from __future__ import annotations

import math

import lightning as L

from dlzoo.checkpoints import CHECKPOINT_KEY, stamp


class EpochHistory(L.Callback):
    """Epoch-level metrics (train/* and val/*) as one row per epoch, after validation has run."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")) and not key.endswith("_step"):
                v = float(value)
                row[key.removesuffix("_epoch")] = v if math.isfinite(v) else None
        if self.ctx.total_epochs is None:
            self.ctx.total_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self.ctx.end_epoch(row)


class CheckpointStamp(L.Callback):
    """Writes task/family/experiment into every checkpoint so evaluate can refuse a foreign one."""

    def __init__(self, task: str, family: str, experiment: str) -> None:
        self.meta = stamp(task, family, experiment)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(self.meta)
