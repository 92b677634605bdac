"""What every RL runner shares: the step/time budget, the record of training episodes (the learning curve),
greedy validation episodes on their own seeds, the one row per iteration the pipeline prints and plots,
and the best-checkpoint bookkeeping. The evaluator runs its test episodes with the same `run_episodes`.

Seeds never overlap: training uses `cfg.seed` + an index (REINFORCE and DQN reset their one environment with
cfg.seed + episode index, A2C and PPO seed their vectorised environments once with cfg.seed + env index),
validation episodes use VAL_SEED + k, and the evaluator's test episodes TEST_SEED + k
(conf/evaluator/control.yaml); `check_runner_args` refuses a `seed` whose training range would reach VAL_SEED."""

from __future__ import annotations

import copy
import csv
import inspect
import logging
import time
from pathlib import Path

import numpy as np
import torch

from dlzoo.errors import ConfigError
from dlzoo.rl.envs import make_env

log = logging.getLogger("dlzoo")

VAL_SEED = 1_000_000
TEST_SEED = 2_000_000   # the evaluator's default `seed` (conf/evaluator/control.yaml)
EPISODES_CSV = "episodes.csv"   # in the model dir: every training episode (env steps, seconds, return, length)
VAL_CSV = "validation.csv"      # in the model dir: every greedy validation (env steps, seconds, mean return)


def run_episodes(policy, env_id: str, seeds, render: bool = False) -> tuple[list[float], list[int], list]:
    """One episode per seed with `policy(obs) -> action` (None: uniform random actions from the seed's own
    action-space RNG); returns, lengths and, with render, the first episode's rgb frames."""
    env = make_env(env_id, render_mode="rgb_array" if render else None)
    returns, lengths, frames = [], [], []
    for k, seed in enumerate(seeds):
        obs, _ = env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        total, steps, done = 0.0, 0, False
        while not done:
            if render and k == 0:
                frames.append(env.render())
            action = env.action_space.sample() if policy is None else policy(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    return returns, lengths, frames


def greedy_policy(model):
    """obs (numpy) -> the model's deterministic action (argmax of π or of Q)."""
    def act(obs):
        with torch.no_grad():
            return int(model.greedy(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0])
    return act


def check_runner_args(cfg, train_fn, unknown: dict, *, positive: dict, fractions: dict | None = None,
                      choices: dict | None = None) -> None:
    """A runner's arguments checked before it builds anything or opens its MLflow run, each refusal one line
    naming the key: `unknown` (the recipe's runner keys the runner does not take, e.g. a typo), counts and
    sizes that must be > 0 (`positive`), values that must lie in [0, 1] (`fractions`), `choices` as
    {key: (value, allowed)}; and the recipe's `seed`, whose training seeds (seed + an episode or env index,
    at most seed + total_steps) must stay below the validation seeds (VAL_SEED + k)."""
    if unknown:
        accepted = [n for n, p in inspect.signature(train_fn).parameters.items()
                    if p.kind is p.KEYWORD_ONLY]
        raise ConfigError(f"unknown runner key(s) {', '.join('runner.' + k for k in sorted(unknown))} for "
                          f"{train_fn.__module__}.train; it accepts: {', '.join(accepted)}")
    for key, value in positive.items():
        if value is None or not value > 0:
            raise ConfigError(f"runner.{key} must be positive, got {value!r}")
    for key, value in (fractions or {}).items():
        if value is None or not 0.0 <= value <= 1.0:
            raise ConfigError(f"runner.{key} must lie in [0, 1], got {value!r}")
    for key, (value, allowed) in (choices or {}).items():
        if value not in allowed:
            raise ConfigError(f"runner.{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    seed, total = int(cfg.seed), int(positive.get("total_steps", 0))
    if seed < 0 or seed + total >= VAL_SEED:
        raise ConfigError(f"seed {seed}: training uses seeds seed .. seed + runner.total_steps ({seed + total}), "
                          f"which must stay in [0, {VAL_SEED}) below the validation ({VAL_SEED:,}+) and test "
                          f"({TEST_SEED:,}+) seeds: pick 0 <= seed < {VAL_SEED - total}")


def bootstrap_truncations(reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, final_obs,
                          value_fn, gamma: float) -> np.ndarray:
    """A time limit is not a failure: where an environment was truncated (not terminated), add γ V(s_T) of
    its last observation `final_obs[i]` to its reward, so the return continues past the cut. In place."""
    for i in np.flatnonzero(truncated & ~terminated):
        with torch.no_grad():
            final = torch.as_tensor(np.asarray(final_obs[i]), dtype=torch.float32)
            reward[i] += gamma * float(value_fn(final.unsqueeze(0)).reshape(-1)[0])
    return reward


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
        gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) on a (T, num_envs) rollout: `dones[t]` = 1
    where an episode ended at step t (its reward already holds γ V(s_T) where it was truncated, see
    `bootstrap_truncations`), `next_value` = V of the observation after the last step. gae_lambda = 1 gives
    the n-step return's advantage (A2C). Returns (advantages, returns = advantages + values)."""
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        nonterminal = 1.0 - dones[t]
        following = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal - values[t]
        running = delta + gamma * gae_lambda * nonterminal * running
        advantages[t] = running
    return advantages, advantages + values


class Budget:
    """The per-stage cap from the recipe: `total_steps` env steps, and `max_seconds` of wall time as a guard
    (a run stopped by the clock is no longer repeatable, so the recipe's step cap should bind first)."""

    def __init__(self, total_steps: int, max_seconds: float):
        self.total_steps, self.max_seconds = int(total_steps), float(max_seconds)
        self.start = time.perf_counter()
        self.stopped_by: str | None = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self, steps: int) -> bool:
        if steps >= self.total_steps:
            self.stopped_by = self.stopped_by or "total_steps"
        elif self.seconds >= self.max_seconds:
            self.stopped_by = self.stopped_by or "max_seconds"
        return self.stopped_by is not None


class Tracker:
    """The training curve and the best checkpoint of one runner.

    `stop_return` (optional) ends training early once validation reaches it and the running mean of the
    last `window` training episodes has reached `cfg.env.solved_return`.
    `episode(...)` records each finished training episode; `due(steps)` says when the next row is due
    (every `eval_every_steps` env steps); `row(...)` runs the greedy validation episodes, reports one row
    through `ctx.end_epoch`, logs it to MLflow and keeps the checkpoint if validation improved."""

    def __init__(self, cfg, ctx, model: torch.nn.Module, budget: Budget, eval_every_steps: int,
                 val_episodes: int = 10, stop_return: float | None = None, window: int = 20):
        self.cfg, self.ctx, self.model, self.budget = cfg, ctx, model, budget
        self.env_id = cfg.env.id
        self.eval_every, self.val_seeds = int(eval_every_steps), [VAL_SEED + k for k in range(val_episodes)]
        self.stop_return, self.window = stop_return, window
        self.episodes: list[tuple[int, float, float, int]] = []  # (env steps at its end, seconds, return, length)
        self.validations: list[tuple[int, float, float]] = []
        self.next_row, self.rows = self.eval_every, 0
        self.best_state: dict | None = None
        self.solved = False  # validation reached stop_return: the runner may stop
        ctx.total_epochs = max(1, -(-budget.total_steps // self.eval_every))

    def episode(self, env_steps: int, ret: float, length: int) -> None:
        self.episodes.append((int(env_steps), round(self.budget.seconds, 3), float(ret), int(length)))

    def recent_return(self) -> float:
        tail = [r for _, _, r, _ in self.episodes[-self.window:]]
        return float(np.mean(tail)) if tail else float("nan")

    def due(self, steps: int) -> bool:
        return steps >= self.next_row or self.budget.exhausted(steps)

    def row(self, steps: int, **losses: float) -> None:
        self.model.eval()
        returns, _, _ = run_episodes(greedy_policy(self.model), self.env_id, self.val_seeds)
        self.model.train()
        val = float(np.mean(returns))
        self.validations.append((int(steps), round(self.budget.seconds, 3), val))
        row = {"epoch": self.rows, "env_steps": int(steps), "episodes": len(self.episodes),
               "seconds": round(self.budget.seconds, 1), "train/return": self.recent_return(), "val/return": val,
               **{f"train/{k}": float(v) for k, v in losses.items() if v is not None}}
        self.ctx.log_metrics({k: v for k, v in row.items() if "/" in k or k == "env_steps"}, step=int(steps))
        self.ctx.end_epoch(row)
        if self.ctx.save_checkpoint(self.model.state_dict(), val, env_id=self.env_id, env_steps=int(steps)):
            self.best_state = copy.deepcopy(self.model.state_dict())
        # Early stop (deterministic: it depends on env steps only) once the greedy policy scores stop_return
        # on every validation seed and the training curve has reached the environment's solved threshold.
        # The running mean counts only once it spans a full window (one lucky early episode is not "solved").
        if (self.stop_return is not None and val >= self.stop_return and len(self.episodes) >= self.window
                and self.recent_return() >= self.cfg.env.solved_return):
            self.solved = True
        self.rows += 1
        while self.next_row <= steps:
            self.next_row += self.eval_every

    def finish(self, steps: int, example: torch.Tensor, **extra) -> dict:
        """Write the curves next to the checkpoint, restore the best weights; the runner's summary."""
        model_dir = Path(self.ctx.model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        with open(model_dir / EPISODES_CSV, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["episode", "env_steps", "seconds", "return", "length"])
            w.writerows((i, *e) for i, e in enumerate(self.episodes))
        with open(model_dir / VAL_CSV, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["env_steps", "seconds", "val_return"])
            w.writerows(self.validations)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        stopped_by = "stop_return" if self.solved else (self.budget.stopped_by or "total_steps")
        if stopped_by == "max_seconds":
            log.warning("%s stopped by its time cap (%.0f s) after %d env steps: the run is not repeatable; "
                        "lower runner.total_steps so the step cap binds first", self.ctx.name, self.budget.max_seconds, steps)
        return {"checkpoint": str(self.ctx.checkpoint_path), "best_score": self.ctx.best_score, "epochs": self.rows,
                "env_steps": int(steps), "episodes": len(self.episodes), "stopped_by": stopped_by,
                "env_id": self.env_id, "model": self.model.eval(), "example": example, **extra}


def setup(cfg, ctx, threads: int = 1) -> np.random.Generator:
    """Single-threaded torch (small MLPs run fastest, and repeatably, on one thread), logged as a run
    param like the other run-time hardware choices; the runner's numpy RNG from the recipe's seed."""
    torch.set_num_threads(threads)
    if ctx.is_main and ctx.run_id is not None:
        from dlzoo.tracking import client

        client(ctx.tracking_uri).log_param(ctx.run_id, "hardware/torch_threads", threads)
    return np.random.default_rng(cfg.seed)
