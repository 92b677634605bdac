"""Simple (Elman) RNN that learns binary addition by back-propagation through time.

Input at step t: bits (a_t, b_t), least-significant first. Output: logit of the sum's bit t.
The carry has to live in the hidden state, which is what makes this the classic BPTT
exercise. Gradient clipping is Lightning's `trainer.gradient_clip_val`; the gradient norm is
logged every step so exploding or vanishing gradients show up in MLflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm
from torch import nn

from dlzoo.errors import ConfigError
from dlzoo.models.base import FamilyModule
from dlzoo.models.init import init_recurrent


class BinaryAdderRNN(nn.Module):
    def __init__(self, hidden_size: int = 16, nonlinearity: str = "tanh", init: str = "xavier", num_layers: int = 1):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"model.net.nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.rnn = nn.RNN(2, hidden_size, num_layers=num_layers, nonlinearity=nonlinearity, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)
        init_recurrent(self.rnn, init, nonlinearity)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        """(batch, steps, 2) input bits -> (batch, steps) logits of the sum bits."""
        hidden, _ = self.rnn(bits)
        return self.head(hidden).squeeze(-1)


class BinaryAdditionModule(FamilyModule):
    def step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        pred = (logits > 0).float()
        on_epoch = split != "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=not on_epoch, on_epoch=True, sync_dist=on_epoch)
        self.log(f"{split}/bit_accuracy", (pred == y).float().mean(), on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}/accuracy", (pred == y).all(dim=1).float().mean(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # Norm before clipping: the curve that shows whether gradients explode or vanish.
        norms = grad_norm(self.net, norm_type=2)
        self.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)
