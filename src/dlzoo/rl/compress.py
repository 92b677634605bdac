"""Compressing an RL agent through the generic compress stage (dlzoo/compression/compress.py), measured by the
RL evaluator on the same test seeds as its parent. Dynamic int8 is the generic `compress=dynamic-int8`; this
module adds what only an agent needs:

- `observations(batch_size, env_id=...)`: the recipe's `compression.examples` hook. An agent has no dataset,
  so the example inputs the stage times and exports with are observations of its environment.
- `policy_distill(ctx, student, ...)` (conf/compress/policy-distill.yaml): policy distillation (Rusu et al.
  2016) into a student of the family's own network class, narrowed by `student` (e.g. {hidden: [12]}). States
  come from rollouts that follow the teacher with probability β (1 → 0 over the rounds, DAgger-style, so the
  student also sees the states its own mistakes lead to); every state is labelled with the teacher's outputs
  and the student minimises KL(softmax(teacher / τ) ‖ softmax(student)): τ = 1 on a policy's logits, τ = 0.01
  on a DQN's Q-values (Rusu et al.'s sharpened targets). An actor-critic student also regresses the teacher's V(s).
- `runner: ${runner}` (conf/compress/policy-distill-control.yaml): the control, the same student trained without
  the teacher by the family's own runner, with the teacher's recipe (algorithm, hyper-parameters, budget, seed).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from dlzoo.compression.context import CompressContext, Compressed
from dlzoo.config import build
from dlzoo.errors import ConfigError
from dlzoo.models import count_parameters
from dlzoo.rl.envs import make_env
from dlzoo.training.run import RunContext


def observations(batch_size: int, *, env_id: str, seed: int = 0) -> tuple[torch.Tensor]:
    """`batch_size` observations of `env_id` under uniform-random actions, episodes seeded `seed`, `seed + 1`,
    ... (the training seeds' range, never the test seeds'): inputs to time and export with, never to score."""
    env = make_env(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    found, episode = [], 0
    while len(found) < batch_size:
        found.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return (torch.as_tensor(np.array(found), dtype=torch.float32),)


def distill_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / τ) ‖ softmax(student)), averaged over states."""
    return F.kl_div(F.log_softmax(student_out, -1), F.log_softmax(teacher_out / temperature, -1),
                    reduction="batchmean", log_target=True)


def check_student(student: nn.Module, teacher: nn.Module, max_fraction: float) -> dict[str, float]:
    """The student's size against the teacher's: a student above `max_fraction` of it is refused in one line."""
    n_student, n_teacher = count_parameters(student), count_parameters(teacher)
    if n_student > max_fraction * n_teacher:
        raise ConfigError(f"the student has {n_student} parameters, more than {max_fraction:g} of the teacher's "
                          f"{n_teacher}: shrink compress.apply.student")
    return {"teacher_params": float(n_teacher), "student_params": float(n_student),
            "student_fraction": n_student / n_teacher}


def distill(teacher: nn.Module, student: nn.Module, env_id: str, *, total_steps: int = 20_000, rounds: int = 10,
            epochs: int = 20, batch_size: int = 256, learning_rate: float = 3e-3, temperature: float | None = None,
            value_coef: float = 0.5, max_student_fraction: float = 0.1, max_seconds: float = float("inf"),
            seed: int = 0) -> tuple[nn.Module, dict]:
    """Train `student` from `teacher` on `total_steps` env steps gathered over `rounds` rounds; `max_seconds`
    is a guard checked between rounds (a run it stops is not repeatable: student/stopped_by_clock 1)."""
    info = check_student(student, teacher, max_student_fraction)
    if min(total_steps, rounds, epochs, batch_size) < 1 or total_steps < rounds:
        raise ConfigError(f"compress.apply needs total_steps >= rounds >= 1, epochs >= 1 and batch_size >= 1; got "
                          f"total_steps={total_steps}, rounds={rounds}, epochs={epochs}, batch_size={batch_size}")
    started, stopped_by_clock = time.perf_counter(), False
    q_teacher = not hasattr(teacher, "critic")
    tau = temperature if temperature is not None else (0.01 if q_teacher else 1.0)
    teacher = teacher.eval()
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    states: list[np.ndarray] = []
    steps, episode = 0, 0
    obs, _ = env.reset(seed=seed)
    for r in range(rounds):
        if time.perf_counter() - started > max_seconds:
            stopped_by_clock = True
            break
        beta = 1.0 - r / max(rounds - 1, 1)  # who acts: the teacher with probability beta, else the student
        for _ in range(total_steps // rounds):
            net = teacher if rng.random() < beta else student
            with torch.no_grad():
                action = int(net.greedy(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0])
            states.append(obs)
            obs, _, terminated, truncated, _ = env.step(action)
            steps += 1
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
        x = torch.as_tensor(np.array(states), dtype=torch.float32)
        with torch.no_grad():
            t_out = teacher(x)
            t_value = teacher.state_value(x) if not q_teacher and hasattr(student, "critic") else None
        student.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(batch_size):
                loss = distill_loss(student(x[idx]), t_out[idx], tau)
                if t_value is not None:
                    loss = loss + value_coef * F.mse_loss(student.state_value(x[idx]), t_value[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        student.eval()
    env.close()
    return student, {**info, "student/env_steps": float(steps), "student/seconds": round(time.perf_counter() - started, 2),
                     "student/stopped_by_clock": float(stopped_by_clock), "distill/temperature": float(tau)}


def student_config(cfg: DictConfig, student: DictConfig | dict) -> DictConfig:
    """The recipe with its model narrowed to `student`: the same class, environment and activation."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model = OmegaConf.merge(cfg.model, student)
    return cfg


class _StudentRun(RunContext):
    """The train stage's services for the control student's run inside a compress stage: its progress lines,
    curve and best-validation weights (in a scratch model dir). No MLflow run of its own: the compress stage's
    run records the result."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


def train_alone(cfg: DictConfig, runner) -> tuple[nn.Module, dict]:
    """The family's `runner` on `cfg` (the student's recipe), seeded as the train stage seeds it."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlzoo-student-") as model_dir:
        with open_dict(cfg):
            cfg.paths.model_dir = model_dir
        run = _StudentRun(cfg, tracking_uri="")
        run.name = f"{os.environ.get('DVC_STAGE') or 'compress'} (control student)"  # its progress lines
        summary = runner(cfg, run)
    return summary["model"].eval(), {
        "student/env_steps": float(summary["env_steps"]), "student/episodes": float(summary["episodes"]),
        "student/best_val_return": float(summary["best_score"]), "student/seconds": round(time.perf_counter() - started, 2),
        "student/stopped_by_clock": float(summary["stopped_by"] == "max_seconds")}


def policy_distill(ctx: CompressContext, student: DictConfig | dict, runner=None, max_student_fraction: float = 0.1,
                   total_steps: int = 20_000, rounds: int = 10, epochs: int = 20, batch_size: int = 256,
                   learning_rate: float = 3e-3, temperature: float | None = None, value_coef: float = 0.5,
                   max_seconds: float = 60.0) -> Compressed:
    """A student of the parent's network class narrowed by `student`, distilled from the parent, or for the
    control, trained without it by `runner` (the recipe's own; the distillation settings then go unused)."""
    cfg = student_config(ctx.cfg, student)
    parent = ctx.parent().eval()
    torch.manual_seed(cfg.seed)  # as the control's runner is seeded before it builds its student: the same initial weights
    net = build(cfg.model, "compress.apply.student")
    info = check_student(net, parent, max_student_fraction)
    if runner is not None:
        net, trained = train_alone(cfg, runner)
        return Compressed([net], {**info, **trained})
    net, info = distill(parent, net, cfg.env.id, total_steps=total_steps, rounds=rounds, epochs=epochs, batch_size=batch_size,
                        learning_rate=learning_rate, temperature=temperature, value_coef=value_coef,
                        max_student_fraction=max_student_fraction, max_seconds=max_seconds, seed=cfg.seed)
    return Compressed([net], info)
