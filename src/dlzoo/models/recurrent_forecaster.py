"""RNN vs LSTM vs GRU for one-step-ahead forecasting: one network, the recurrent cell chosen by config.

The three families share everything (window, head, optimiser, budget) except the cell, so their
comparison in MLflow is about the cell alone. The parameter count is logged: for the same hidden
size a GRU has 3/4 of an LSTM's recurrent weights and a plain RNN 1/4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.errors import ConfigError
from dlzoo.models.base import FamilyModule
from dlzoo.models.init import init_recurrent

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentForecaster(nn.Module):
    def __init__(self, cell: str = "lstm", hidden_size: int = 32, num_layers: int = 1, dropout: float = 0.0, init: str = "default"):
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"model.net.cell must be one of {', '.join(CELLS)}, got {cell!r}")
        self.cell = cell
        self.rnn = CELLS[cell](1, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, 1)
        init_recurrent(self.rnn, init)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """(batch, window, 1) standardised history -> (batch,) next value."""
        hidden, _ = self.rnn(window)
        return self.head(hidden[:, -1]).squeeze(-1)


class ForecastModule(FamilyModule):
    def step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        pred = self(x)
        loss = F.mse_loss(pred, y)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=split == "val", sync_dist=True)
        self.log(f"{split}/mae_std", (pred - y).abs().mean(), on_step=False, on_epoch=True, sync_dist=True)
        return loss
