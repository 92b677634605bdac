"""The LightningModule every image-classification family shares: cross-entropy, accuracy, AdamW +
cosine schedule. The families differ only in their nn.Module (cnn.py, mobilenet.py, densenet.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dlzoo.models.base import FamilyModule


class ClassifierModule(FamilyModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None, num_classes: int = 10, label_smoothing: float = 0.0):
        super().__init__(net, optimizer, scheduler)
        self.label_smoothing = label_smoothing
        self.accuracy = nn.ModuleDict({s: MulticlassAccuracy(num_classes, average="micro") for s in ("train_", "val_", "test_")})

    def step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        acc = self.accuracy[f"{split}_"]
        acc(logits, y)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}/accuracy", acc, on_step=False, on_epoch=True, prog_bar=split == "val")
        return loss
