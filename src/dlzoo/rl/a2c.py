"""A2C (Mnih et al. 2016, the synchronous advantage actor-critic): `num_envs` vectorised environments
(gymnasium.vector), n-step advantages (GAE; gae_lambda = 1 gives the plain n-step return) from a V(s) head,
one gradient step of policy loss + value loss − entropy bonus per `num_envs × num_steps` transitions.

    runner(cfg, ctx): the recipe's `runner` (conf/experiment/control-*-a2c.yaml) with these hyper-parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dlzoo.config import build
from dlzoo.rl.envs import make_vec_env
from dlzoo.rl.rollout import Budget, Tracker, bootstrap_truncations, check_runner_args, gae, setup


def train(cfg, ctx, *, total_steps: int, max_seconds: float, num_envs: int = 8, num_steps: int = 5,
          learning_rate: float = 7e-4, optimizer: str = "rmsprop", gamma: float = 0.99, gae_lambda: float = 1.0,
          ent_coef: float = 0.0, vf_coef: float = 0.5, max_grad_norm: float = 0.5, normalize_advantages: bool = False,
          eval_every_steps: int = 10_000, val_episodes: int = 10, stop_return: float | None = None, **unknown) -> dict:
    check_runner_args(cfg, train, unknown, positive=dict(
        total_steps=total_steps, max_seconds=max_seconds, num_envs=num_envs, num_steps=num_steps,
        learning_rate=learning_rate, max_grad_norm=max_grad_norm, eval_every_steps=eval_every_steps,
        val_episodes=val_episodes), fractions=dict(gamma=gamma, gae_lambda=gae_lambda),
        choices=dict(optimizer=(optimizer, ("rmsprop", "adam"))))
    agent = build(cfg.model, "model")          # refuses an unknown id or a continuous action space, before any run
    envs = make_vec_env(cfg.env.id, num_envs)
    setup(cfg, ctx)
    budget = Budget(total_steps, max_seconds)
    tracker = Tracker(cfg, ctx, agent, budget, eval_every_steps, val_episodes, stop_return)
    if optimizer == "rmsprop":   # as in the paper and Stable-Baselines3
        opt = torch.optim.RMSprop(agent.parameters(), lr=learning_rate, alpha=0.99, eps=1e-5)
    else:                        # "adam" (check_runner_args refused anything else)
        opt = torch.optim.Adam(agent.parameters(), lr=learning_rate)

    obs, _ = envs.reset(seed=[cfg.seed + i for i in range(num_envs)])
    obs = torch.as_tensor(obs, dtype=torch.float32)
    ep_return, ep_length = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
    steps, losses = 0, {}
    while not budget.exhausted(steps) and not tracker.solved:
        # ---- n steps in every environment, keeping the graph of log π and V for one update
        log_probs, values, entropies, rewards, dones = [], [], [], [], []
        for _ in range(num_steps):
            dist, value = agent.dist(obs), agent.value(obs)
            action = dist.sample()
            next_obs, reward, terminated, truncated, info = envs.step(action.numpy())
            reward = reward.astype(np.float32)
            ep_return += reward
            ep_length += 1
            bootstrap_truncations(reward, terminated, truncated, info.get("final_obs"), agent.value, gamma)
            # every environment has taken this vector step: an episode ending in it ends at steps + num_envs
            for i in np.flatnonzero(terminated | truncated):
                tracker.episode(steps + num_envs, ep_return[i], ep_length[i])
                ep_return[i], ep_length[i] = 0.0, 0
            log_probs.append(dist.log_prob(action))
            values.append(value)
            entropies.append(dist.entropy())
            rewards.append(torch.as_tensor(reward))
            dones.append(torch.as_tensor(terminated | truncated, dtype=torch.float32))
            obs = torch.as_tensor(next_obs, dtype=torch.float32)
            steps += num_envs
        # ---- n-step advantages bootstrapped from V(s_{t+n}) (GAE with gae_lambda)
        with torch.no_grad():
            advantages, returns = gae(torch.stack(rewards), torch.stack(values).detach(), torch.stack(dones),
                                      agent.value(obs), gamma, gae_lambda)
            if normalize_advantages:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(torch.stack(log_probs) * advantages).mean()
        value_loss = 0.5 * (torch.stack(values) - returns).pow(2).mean()
        entropy = torch.stack(entropies).mean()
        loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
        opt.step()
        losses = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}
        if tracker.due(steps):
            tracker.row(steps, **losses)
    envs.close()
    if not tracker.validations or tracker.validations[-1][0] != steps:
        tracker.row(steps, **losses)
    return tracker.finish(steps, example=obs[:1])
