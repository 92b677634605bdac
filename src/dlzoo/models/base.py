"""What every family's LightningModule shares: the train/val/test steps all go through one
`step(batch, split)`, and the optimiser and LR schedule come from config as `_partial_` factories.

`scheduler_interval: epoch` steps the schedule once per epoch (e.g. CosineAnnealingLR with
T_max = max_epochs); `step` steps it every batch and hands it `total_steps` (OneCycleLR needs it)."""

from __future__ import annotations

import lightning as L
from torch import nn

from dlzoo.errors import ConfigError


class FamilyModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None, scheduler_interval: str = "epoch"):
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"model.scheduler_interval must be epoch or step, got {scheduler_interval!r}")
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.scheduler_interval = scheduler_interval

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def step(self, batch, split: str):
        """Compute and log the loss and metrics of `batch`; return the loss. Families implement this."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        if self.scheduler_interval == "step":
            scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
