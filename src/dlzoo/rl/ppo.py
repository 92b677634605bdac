"""PPO (Schulman et al. 2017): a clipped surrogate objective on GAE advantages, several epochs of minibatch
updates on each batch of `num_envs × num_steps` transitions (after CleanRL's ppo.py).

    runner(cfg, ctx): the recipe's `runner` (conf/experiment/control-*-ppo.yaml) with these hyper-parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dlzoo.config import build
from dlzoo.rl.envs import make_vec_env
from dlzoo.rl.rollout import Budget, Tracker, setup


def train(cfg, ctx, *, total_steps: int, max_seconds: float, num_envs: int = 8, num_steps: int = 128,
          learning_rate: float = 2.5e-4, anneal_lr: bool = True, gamma: float = 0.99, gae_lambda: float = 0.95,
          num_minibatches: int = 4, update_epochs: int = 4, clip_coef: float = 0.2, ent_coef: float = 0.01,
          vf_coef: float = 0.5, max_grad_norm: float = 0.5, eval_every_steps: int = 10_000, val_episodes: int = 10,
          stop_return: float | None = None) -> dict:
    agent = build(cfg.model, "model")          # refuses an unknown id or a continuous action space, before any run
    envs = make_vec_env(cfg.env.id, num_envs)
    setup(cfg, ctx)
    budget = Budget(total_steps, max_seconds)
    tracker = Tracker(cfg, ctx, agent, budget, eval_every_steps, val_episodes, stop_return)
    optimizer = torch.optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)
    batch_size = num_envs * num_steps
    minibatch = batch_size // num_minibatches
    n_updates = max(1, total_steps // batch_size)

    obs_buf = torch.zeros((num_steps, num_envs, *envs.single_observation_space.shape))
    act_buf = torch.zeros((num_steps, num_envs), dtype=torch.long)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((num_steps, num_envs)) for _ in range(4))

    obs, _ = envs.reset(seed=[cfg.seed + i for i in range(num_envs)])
    obs = torch.as_tensor(obs, dtype=torch.float32)
    ep_return, ep_length = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
    steps, update, losses = 0, 0, {}
    while not budget.exhausted(steps) and not tracker.solved:
        if anneal_lr:
            optimizer.param_groups[0]["lr"] = learning_rate * max(1.0 - update / n_updates, 0.05)
        # ---- collect num_steps transitions from every environment with the current policy
        for t in range(num_steps):
            with torch.no_grad():
                dist, value = agent.dist(obs), agent.value(obs)
                action = dist.sample()
            obs_buf[t], act_buf[t], logp_buf[t], val_buf[t] = obs, action, dist.log_prob(action), value
            next_obs, reward, terminated, truncated, info = envs.step(action.numpy())
            reward = reward.astype(np.float32)
            ep_return += reward
            ep_length += 1
            for i in np.flatnonzero(truncated & ~terminated):  # a time limit is not a failure: bootstrap V(s_T)
                with torch.no_grad():
                    final = torch.as_tensor(info["final_obs"][i], dtype=torch.float32)
                    reward[i] += gamma * agent.value(final.unsqueeze(0)).item()
            for i in np.flatnonzero(terminated | truncated):
                tracker.episode(steps + (i + 1), ep_return[i], ep_length[i])
                ep_return[i], ep_length[i] = 0.0, 0
            rew_buf[t] = torch.as_tensor(reward)
            done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            obs = torch.as_tensor(next_obs, dtype=torch.float32)
            steps += num_envs
        # ---- generalised advantage estimation (Schulman et al. 2016)
        with torch.no_grad():
            next_value = agent.value(obs)
        advantages = torch.zeros_like(rew_buf)
        gae = torch.zeros(num_envs)
        for t in reversed(range(num_steps)):
            nonterminal = 1.0 - done_buf[t]
            following = next_value if t == num_steps - 1 else val_buf[t + 1]
            delta = rew_buf[t] + gamma * following * nonterminal - val_buf[t]
            gae = delta + gamma * gae_lambda * nonterminal * gae
            advantages[t] = gae
        returns = advantages + val_buf
        # ---- several epochs of clipped-surrogate updates on shuffled minibatches
        b_obs, b_act, b_logp = obs_buf.flatten(0, 1), act_buf.flatten(), logp_buf.flatten()
        b_adv, b_ret = advantages.flatten(), returns.flatten()
        clipfracs = []
        for _ in range(update_epochs):
            for idx in torch.randperm(batch_size).split(minibatch):
                dist = agent.dist(b_obs[idx])
                logratio = dist.log_prob(b_act[idx]) - b_logp[idx]
                ratio = logratio.exp()
                adv = b_adv[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
                value_loss = 0.5 * (agent.value(b_obs[idx]) - b_ret[idx]).pow(2).mean()
                entropy = dist.entropy().mean()
                loss = policy_loss - ent_coef * entropy + vf_coef * value_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
                optimizer.step()
                clipfracs.append(((ratio - 1).abs() > clip_coef).float().mean().item())
        update += 1
        losses = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
                  "clipfrac": float(np.mean(clipfracs))}
        if tracker.due(steps):
            tracker.row(steps, **losses)
    envs.close()
    if not tracker.validations or tracker.validations[-1][0] != steps:
        tracker.row(steps, **losses)
    return tracker.finish(steps, example=obs[:1], updates=update)
