"""What every family's LightningModule shares: the train/val/test steps all go through one
`step(batch, split)`, and the optimiser and LR schedule come from config as `_partial_` factories."""

from __future__ import annotations

import lightning as L
from torch import nn


class FamilyModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None):
        super().__init__()
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler

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
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
