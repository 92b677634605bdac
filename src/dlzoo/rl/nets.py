"""The networks of the RL families: π(a|s) with V(s) (ActorCritic: REINFORCE's baseline, A2C, PPO) and
Q(s, ·) (QNetwork: DQN). Each is built from the environment id, so its sizes come from the environment and a
continuous action space is refused before any training. Both expose the same three views the evaluator uses:
`forward(obs)` (action logits or Q-values), `greedy(obs)` (the deterministic action) and `state_value(obs)`."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlzoo.errors import CheckpointError, ConfigError
from dlzoo.rl.envs import env_spaces


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers with orthogonal init (gain √2 hidden, `out_gain` last), `activation` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, activation()]
    return nn.Sequential(*layers)


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def activation_class(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class _EnvNet(nn.Module):
    """Loading weights checks their shapes first: a network of another environment (other observation or
    action sizes) or another architecture is refused in one line, not with PyTorch's list of mismatches."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = self.state_dict()
        for name, tensor in state_dict.items():
            if name in own and tuple(own[name].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"the checkpoint's {name} has shape {tuple(tensor.shape)}, this {self.env_id} network's {tuple(own[name].shape)}: "
                    f"a checkpoint of another environment or network size?")
        if strict and set(own) != set(state_dict):
            raise CheckpointError(f"the checkpoint's parameters ({sorted(set(state_dict) ^ set(own))[:4]} differ) "
                                  f"are not this {type(self).__name__}'s: a checkpoint of another family?")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class ActorCritic(_EnvNet):
    """Separate policy and value MLPs: `actor` gives the logits of π(·|s), `critic` gives V(s)."""

    def __init__(self, env_id: str, hidden: list[int] = (64, 64), activation: str = "tanh", family: str = "actor-critic"):
        super().__init__()
        obs_dim, n_actions = env_spaces(env_id, needs_discrete=family)
        self.env_id = env_id
        act = activation_class(activation)
        self.actor = mlp([obs_dim, *hidden, n_actions], act, out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], act, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def dist(self, obs: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.actor(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs).argmax(-1)

    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs)


class QNetwork(_EnvNet):
    """Q(s, ·): one output per action; the greedy policy takes the argmax, V(s) = max_a Q(s, a)."""

    def __init__(self, env_id: str, hidden: list[int] = (256, 256), activation: str = "relu", family: str = "dqn"):
        super().__init__()
        obs_dim, n_actions = env_spaces(env_id, needs_discrete=family)
        self.env_id = env_id
        self.q = mlp([obs_dim, *hidden, n_actions], activation_class(activation))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(obs)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(obs).argmax(-1)

    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(obs).max(-1).values
