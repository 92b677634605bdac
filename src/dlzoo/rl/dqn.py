"""DQN (Mnih et al. 2015): Q(s, a) learned from a replay buffer towards r + γ max_a' Q_target(s', a'), a target
network copied every `target_update_steps`, an ε-greedy policy with ε decayed linearly; `double: true` gives
Double DQN (van Hasselt et al. 2016: the online network picks a', the target network scores it).

    runner(cfg, ctx): the recipe's `runner` (conf/experiment/control-*-dqn.yaml) with these hyper-parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from dlzoo.config import build
from dlzoo.errors import ConfigError
from dlzoo.rl.envs import make_env
from dlzoo.rl.rollout import Budget, Tracker, check_runner_args, setup


def td_target(rewards: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor, gamma: float,
              target_net: nn.Module, online_net: nn.Module | None = None) -> torch.Tensor:
    """r + γ (1 − terminated) Q_target(s', a*), a* = argmax_a Q_target(s', a) (DQN) or argmax_a Q_online(s', a)
    (Double DQN, with `online_net`). A truncated episode is not terminated: its s' is still bootstrapped."""
    with torch.no_grad():
        q_next = target_net(next_obs)
        if online_net is None:
            best = q_next.max(-1).values
        else:
            best = q_next.gather(-1, online_net(next_obs).argmax(-1, keepdim=True)).squeeze(-1)
        return rewards + gamma * (1.0 - terminated) * best


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    return end + (start - end) * max(0.0, 1.0 - t / max(duration, 1))


class ReplayBuffer:
    """A ring buffer of (s, a, r, s', terminated) with uniform sampling from the runner's RNG."""

    def __init__(self, capacity: int, obs_dim: int, rng: np.random.Generator):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.pos, self.rng = capacity, 0, 0, rng

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.terminated[i] = obs, action, reward, next_obs, terminated
        self.pos, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, n: int):
        idx = self.rng.integers(0, self.size, n)
        return (torch.as_tensor(self.obs[idx]), torch.as_tensor(self.actions[idx]), torch.as_tensor(self.rewards[idx]),
                torch.as_tensor(self.next_obs[idx]), torch.as_tensor(self.terminated[idx]))


def train(cfg, ctx, *, total_steps: int, max_seconds: float, learning_rate: float = 6.3e-4, buffer_size: int = 50_000,
          batch_size: int = 128, gamma: float = 0.99, learning_starts: int = 1000, train_frequency: int = 4,
          gradient_steps: int = 1, target_update_steps: int = 250, start_epsilon: float = 1.0,
          end_epsilon: float = 0.05, exploration_fraction: float = 0.1, double: bool = False,
          loss: str = "huber", max_grad_norm: float = 10.0, eval_every_steps: int = 10_000, val_episodes: int = 10,
          stop_return: float | None = None, **unknown) -> dict:
    check_runner_args(cfg, train, unknown, positive=dict(
        total_steps=total_steps, max_seconds=max_seconds, learning_rate=learning_rate, buffer_size=buffer_size,
        batch_size=batch_size, train_frequency=train_frequency, gradient_steps=gradient_steps,
        target_update_steps=target_update_steps, max_grad_norm=max_grad_norm, eval_every_steps=eval_every_steps,
        val_episodes=val_episodes), fractions=dict(
        gamma=gamma, start_epsilon=start_epsilon, end_epsilon=end_epsilon, exploration_fraction=exploration_fraction),
        choices=dict(loss=(loss, ("huber", "mse"))))
    if learning_starts < 0:
        raise ConfigError(f"runner.learning_starts must be >= 0, got {learning_starts}")
    q_net = build(cfg.model, "model")          # refuses an unknown id or a continuous action space, before any run
    env = make_env(cfg.env.id)
    rng = setup(cfg, ctx)
    budget = Budget(total_steps, max_seconds)
    tracker = Tracker(cfg, ctx, q_net, budget, eval_every_steps, val_episodes, stop_return)
    target_net = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=learning_rate)
    buffer = ReplayBuffer(buffer_size, env.observation_space.shape[0], rng)
    criterion = nn.SmoothL1Loss() if loss == "huber" else nn.MSELoss()  # "mse": nothing else passes the check
    env.action_space.seed(cfg.seed)

    obs, _ = env.reset(seed=cfg.seed)
    steps, n_episodes, ep_return, ep_length, losses = 0, 0, 0.0, 0, {}
    while not budget.exhausted(steps) and not tracker.solved:
        # ---- act ε-greedily, store the transition
        epsilon = linear_schedule(start_epsilon, end_epsilon, int(exploration_fraction * total_steps), steps)
        if rng.random() < epsilon:
            action = int(env.action_space.sample())
        else:
            with torch.no_grad():
                action = int(q_net.greedy(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, float(terminated))
        steps, ep_return, ep_length = steps + 1, ep_return + float(reward), ep_length + 1
        obs = next_obs
        if terminated or truncated:
            n_episodes += 1
            tracker.episode(steps, ep_return, ep_length)
            obs, _ = env.reset(seed=cfg.seed + n_episodes)
            ep_return, ep_length = 0.0, 0
        # ---- learn from replayed minibatches; refresh the target network
        if steps > learning_starts and steps % train_frequency == 0:
            for _ in range(gradient_steps):
                b_obs, b_act, b_rew, b_next, b_term = buffer.sample(batch_size)
                target = td_target(b_rew, b_next, b_term, gamma, target_net, q_net if double else None)
                q = q_net(b_obs).gather(-1, b_act.unsqueeze(-1)).squeeze(-1)
                td_loss = criterion(q, target)
                optimizer.zero_grad()
                td_loss.backward()
                nn.utils.clip_grad_norm_(q_net.parameters(), max_grad_norm)
                optimizer.step()
            losses = {"loss": td_loss.item(), "q_mean": q.mean().item(), "epsilon": epsilon}
        if steps % target_update_steps == 0:
            target_net.load_state_dict(q_net.state_dict())
        if tracker.due(steps):
            tracker.row(steps, **losses)
    env.close()
    if not tracker.validations or tracker.validations[-1][0] != steps:
        tracker.row(steps, **losses)
    return tracker.finish(steps, example=torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
