"""Compressing an RL agent's network, measured by the RL evaluator (dlzoo/rl/evaluate.py) on the same test
seeds as its parent. Not yet a pipeline stage: the generic compress entry (dlzoo/compression/compress.py)
still requires a DataModule and a LightningModule `.net` (see the proposal in the RL issue's report).

- `dynamic_int8(model)`: torch's dynamic quantisation of every Linear (int8 weights, activations quantised
  on the fly); the quantised copy keeps the family's `greedy` / `state_value` views.
- `distill(teacher, student, env_id, ...)`: policy distillation (Rusu et al. 2016). States come from
  rollouts that follow the teacher with probability β (1 → 0 over the run, DAgger-style, so the student
  also sees the states its own mistakes lead to); every state is labelled with the teacher's outputs and the
  student minimises KL(softmax(teacher / τ) ‖ softmax(student)): τ = 1 on a policy's logits, τ = 0.01 on a
  DQN's Q-values (Rusu et al.'s sharpened targets). An actor-critic student also regresses the teacher's V(s).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.errors import ConfigError
from dlzoo.rl.envs import make_env


def dynamic_int8(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao's deprecation notice, as in dlzoo/compression/quantize.py
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def distill_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / τ) ‖ softmax(student)), averaged over states."""
    return F.kl_div(F.log_softmax(student_out, -1), F.log_softmax(teacher_out / temperature, -1),
                    reduction="batchmean", log_target=True)


def distill(teacher: nn.Module, student: nn.Module, env_id: str, *, total_steps: int = 20_000, rounds: int = 10,
            epochs: int = 20, batch_size: int = 256, learning_rate: float = 3e-3, temperature: float | None = None,
            value_coef: float = 0.5, max_student_fraction: float = 0.1, seed: int = 0) -> tuple[nn.Module, dict]:
    """Train `student` from `teacher` on `total_steps` env steps gathered over `rounds` rounds."""
    if num_params(student) > max_student_fraction * num_params(teacher):
        raise ConfigError(f"the student has {num_params(student)} parameters, more than {max_student_fraction:g} of the "
                          f"teacher's {num_params(teacher)}: shrink it")
    q_teacher = not hasattr(teacher, "critic")
    tau = temperature if temperature is not None else (0.01 if q_teacher else 1.0)
    teacher = teacher.eval()
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    states: list[np.ndarray] = []
    steps, episode = 0, 0
    obs, _ = env.reset(seed=seed)
    for r in range(rounds):
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
    info = {"distill/env_steps": float(steps), "distill/temperature": float(tau), "teacher_params": float(num_params(teacher)),
            "student_params": float(num_params(student)), "student_fraction": num_params(student) / num_params(teacher)}
    return student, info
