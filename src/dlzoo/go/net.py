"""The AlphaGo Zero network (Silver et al. 2017), scaled down: a convolutional stem, a tower of residual
blocks, a policy head (a logit per point, and one for the pass) and a value head (tanh, the expected outcome
for the player to move).

Both heads are fully convolutional with global pooling, so the weights fit any board; the board size the
net was trained on is kept as a buffer in its state_dict, and the evaluator refuses a checkpoint of
another board size by that stamp (one line), instead of playing it on a board it never saw."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.errors import ConfigError
from dlzoo.go.game import PLANES


def go_device(accelerator) -> torch.device:
    """Where the Zero network computes: CUDA for a GPU trainer (profile=full picks trainer=gpu), else the CPU.
    Self-play and the arenas send each simulation's leaves of all games as one batch, which is what a GPU is for;
    the tree search and the rules stay on the CPU."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_state(net: nn.Module) -> dict:
    """The state_dict on the CPU: checkpoints load anywhere (map_location is then a no-op)."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ZeroNet(nn.Module):
    """(B, PLANES, N, N) planes -> (policy logits (B, N*N + 1), value (B,) in [-1, 1])."""

    def __init__(self, board_size: int, channels: int = 32, blocks: int = 3, value_hidden: int = 64):
        super().__init__()
        self.register_buffer("trained_board_size", torch.tensor(int(board_size)))
        self.stem = nn.Sequential(nn.Conv2d(PLANES, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.tower = nn.Sequential(*[Residual(channels) for _ in range(blocks)])
        self.policy_conv = nn.Sequential(nn.Conv2d(channels, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
        self.policy_point = nn.Conv2d(2, 1, 1)     # a logit per point
        self.policy_pass = nn.Linear(channels, 1)  # the pass, from the board's mean features
        self.value_conv = nn.Sequential(nn.Conv2d(channels, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
        self.value_fc = nn.Sequential(nn.Linear(2 + channels, value_hidden), nn.ReLU(), nn.Linear(value_hidden, 1))

    @property
    def board_size(self) -> int:
        return int(self.trained_board_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.tower(self.stem(x))
        pooled = h.mean(dim=(2, 3))
        points = self.policy_point(self.policy_conv(h)).flatten(1)
        logits = torch.cat([points, self.policy_pass(pooled)], dim=1)
        v = self.value_fc(torch.cat([self.value_conv(h).mean(dim=(2, 3)), pooled], dim=1))
        return logits, torch.tanh(v.squeeze(1))
