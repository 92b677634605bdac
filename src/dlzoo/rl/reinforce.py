"""REINFORCE (Williams 1992) with a learned state-value baseline: Monte-Carlo returns of whole episodes,
the policy pushed along ∇ log π(a|s) · (G_t − V(s_t)), V(s) regressed on G_t (Sutton & Barto, ch. 13.4).

    runner(cfg, ctx): the recipe's `runner` (conf/experiment/control-*-reinforce.yaml) with these hyper-parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dlzoo.config import build
from dlzoo.rl.envs import make_env
from dlzoo.rl.rollout import Budget, Tracker, check_runner_args, setup


def discounted_returns(rewards: list[float], gamma: float, bootstrap: float = 0.0) -> torch.Tensor:
    """G_t = r_t + γ r_{t+1} + γ² r_{t+2} + ... for each step of one episode; an episode cut by the time
    limit (not ended by the environment) continues from `bootstrap` = V(s_T)."""
    out, running = np.zeros(len(rewards), dtype=np.float32), float(bootstrap)
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return torch.as_tensor(out)


def policy_gradient_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """−E[log π(a|s) · A]: its gradient step raises the probability of actions with positive advantage."""
    return -(log_probs * advantages.detach()).mean()


def train(cfg, ctx, *, total_steps: int, max_seconds: float, episodes_per_update: int = 4, gamma: float = 0.99,
          learning_rate: float = 1e-3, value_learning_rate: float = 1e-3, ent_coef: float = 0.0,
          normalize_advantages: bool = True, max_grad_norm: float = 1.0, eval_every_steps: int = 10_000,
          val_episodes: int = 10, stop_return: float | None = None, **unknown) -> dict:
    check_runner_args(cfg, train, unknown, positive=dict(
        total_steps=total_steps, max_seconds=max_seconds, episodes_per_update=episodes_per_update,
        learning_rate=learning_rate, value_learning_rate=value_learning_rate, max_grad_norm=max_grad_norm,
        eval_every_steps=eval_every_steps, val_episodes=val_episodes), fractions=dict(gamma=gamma))
    agent = build(cfg.model, "model")          # refuses an unknown id or a continuous action space, before any run
    env = make_env(cfg.env.id)
    setup(cfg, ctx)
    budget = Budget(total_steps, max_seconds)
    tracker = Tracker(cfg, ctx, agent, budget, eval_every_steps, val_episodes, stop_return)
    policy_opt = torch.optim.Adam(agent.actor.parameters(), lr=learning_rate)
    value_opt = torch.optim.Adam(agent.critic.parameters(), lr=value_learning_rate)

    steps, n_episodes, losses = 0, 0, {}
    obs_batch, act_batch, ret_batch = [], [], []
    while not budget.exhausted(steps) and not tracker.solved:
        # ---- one whole episode with the current stochastic policy
        obs, _ = env.reset(seed=cfg.seed + n_episodes)
        observations, actions, rewards, done = [], [], [], False
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                action = int(agent.dist(obs_t.unsqueeze(0)).sample()[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs_t)
            actions.append(action)
            rewards.append(float(reward))
            done = terminated or truncated
        bootstrap = 0.0
        if truncated and not terminated:  # the time limit is not a failure: the return continues from V(s_T)
            with torch.no_grad():
                bootstrap = agent.value(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).item()
        steps += len(rewards)
        n_episodes += 1
        tracker.episode(steps, sum(rewards), len(rewards))
        obs_batch.append(torch.stack(observations))
        act_batch.append(torch.as_tensor(actions))
        ret_batch.append(discounted_returns(rewards, gamma, bootstrap))
        # ---- every episodes_per_update episodes: one policy-gradient step and one value-regression step
        if n_episodes % episodes_per_update == 0:
            b_obs, b_act, b_ret = torch.cat(obs_batch), torch.cat(act_batch), torch.cat(ret_batch)
            obs_batch, act_batch, ret_batch = [], [], []
            dist = agent.dist(b_obs)
            advantages = b_ret - agent.value(b_obs).detach()
            if normalize_advantages:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            entropy = dist.entropy().mean()
            policy_loss = policy_gradient_loss(dist.log_prob(b_act), advantages) - ent_coef * entropy
            policy_opt.zero_grad()
            policy_loss.backward()
            nn.utils.clip_grad_norm_(agent.actor.parameters(), max_grad_norm)
            policy_opt.step()
            value_loss = 0.5 * (agent.value(b_obs) - b_ret).pow(2).mean()
            value_opt.zero_grad()
            value_loss.backward()
            nn.utils.clip_grad_norm_(agent.critic.parameters(), max_grad_norm)
            value_opt.step()
            losses = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}
        if tracker.due(steps):
            tracker.row(steps, **losses)
    env.close()
    if not tracker.validations or tracker.validations[-1][0] != steps:
        tracker.row(steps, **losses)
    return tracker.finish(steps, example=torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
