"""PPO (Schulman et al. 2017): a clipped surrogate objective on GAE advantages, several epochs of minibatch
updates on each batch of `num_envs × num_steps` transitions (after CleanRL's ppo.py).

    runner(cfg, ctx): the recipe's `runner` (conf/experiment/control-*-ppo.yaml) with these hyper-parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dlzoo.config import build
from dlzoo.errors import ConfigError
from dlzoo.rl.envs import make_vec_env
from dlzoo.rl.rollout import Budget, Tracker, bootstrap_truncations, check_runner_args, gae, setup


def train(cfg, ctx, *, total_steps: int, max_seconds: float, num_envs: int = 8, num_steps: int = 128,
          learning_rate: float = 2.5e-4, anneal_lr: bool = True, gamma: float = 0.99, gae_lambda: float = 0.95,
          num_minibatches: int = 4, update_epochs: int = 4, clip_coef: float = 0.2, ent_coef: float = 0.01,
          vf_coef: float = 0.5, max_grad_norm: float = 0.5, eval_every_steps: int = 10_000, val_episodes: int = 10,
          stop_return: float | None = None, **unknown) -> dict:
    check_runner_args(cfg, train, unknown, positive=dict(
        total_steps=total_steps, max_seconds=max_seconds, num_envs=num_envs, num_steps=num_steps,
        learning_rate=learning_rate, num_minibatches=num_minibatches, update_epochs=update_epochs,
        clip_coef=clip_coef, max_grad_norm=max_grad_norm, eval_every_steps=eval_every_steps,
        val_episodes=val_episodes), fractions=dict(gamma=gamma, gae_lambda=gae_lambda))
    if num_minibatches > num_envs * num_steps:
        raise ConfigError(f"runner.num_minibatches ({num_minibatches}) exceeds the batch of runner.num_envs × "
                          f"runner.num_steps = {num_envs * num_steps} transitions")
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
        # Linear annealing as in CleanRL, but floored at 5% of the rate rather than reaching 0: the loop runs
        # ceil(total_steps / batch) updates, one more than n_updates when total_steps is not a multiple of the
        # batch, and that last update would otherwise get a rate of 0 and be wasted; the cpu-profile recipes
        # were tuned with this floor.
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
            bootstrap_truncations(reward, terminated, truncated, info.get("final_obs"), agent.value, gamma)
            # every environment has taken this vector step: an episode ending in it ends at steps + num_envs
            for i in np.flatnonzero(terminated | truncated):
                tracker.episode(steps + num_envs, ep_return[i], ep_length[i])
                ep_return[i], ep_length[i] = 0.0, 0
            rew_buf[t] = torch.as_tensor(reward)
            done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            obs = torch.as_tensor(next_obs, dtype=torch.float32)
            steps += num_envs
        # ---- generalised advantage estimation (Schulman et al. 2016)
        with torch.no_grad():
            advantages, returns = gae(rew_buf, val_buf, done_buf, agent.value(obs), gamma, gae_lambda)
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
