"""Compressing the AlphaGo Zero network: distillation into a narrower, shallower ZeroNet (the compress stage's
`go-distill` method), and the positions the stage times networks on (`compression.examples`).

Distillation (Hinton et al. 2015, as policy distillation in Rusu et al. 2016): the student learns the
teacher *network's* outputs, the move distribution (KL) and the value (squared error), on positions from
self-play. Round 0 plays the teacher's own search games; later rounds let the student's search play, so the
student also sees, labelled by the teacher, the positions its own mistakes lead to (DAgger, Ross et al. 2011).
The compress stage then measures it with the Go evaluator, including an arena against the uncompressed
network at equal simulations (`evaluator.parent_games`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from dlzoo.compression.context import CompressContext, Compressed
from dlzoo.errors import ConfigError
from dlzoo.go.game import encode, load_game
from dlzoo.go.net import ZeroNet
from dlzoo.go.players import NetEvaluator
from dlzoo.go.selfplay import self_play
from dlzoo.models import count_parameters


def positions(batch_size: int, *, board_size: int, komi: float, supported_sizes, seed: int = 0) -> tuple[torch.Tensor]:
    """`batch_size` encoded positions from uniformly random games (seeded from the training range): inputs to
    time networks on, never to score them."""
    game = load_game(board_size, komi, supported_sizes)
    rng = np.random.default_rng(seed)
    found, state = [], game.new_initial_state()
    while len(found) < batch_size:
        if state.is_terminal():
            state = game.new_initial_state()
        found.append(encode(state, board_size))
        state.apply_action(int(rng.choice(state.legal_actions())))
    return (torch.from_numpy(np.stack(found)),)


def distill(ctx: CompressContext, student: dict, rounds: int = 3, games_per_round: int = 128, simulations: int = 16,
            epochs: int = 4, batch_size: int = 256, learning_rate: float = 3e-3, temperature: float = 1.0,
            value_coef: float = 1.0, max_student_fraction: float = 0.25, max_seconds: float = 120.0) -> Compressed:
    """A ZeroNet of the `student` size trained to the teacher's policy and value on self-play positions."""
    cfg = ctx.cfg
    teacher = ctx.parent().eval()
    n = teacher.board_size
    pupil = ZeroNet(n, **dict(student))
    fraction = count_parameters(pupil) / count_parameters(teacher)
    if fraction > max_student_fraction:
        raise ConfigError(f"compress.apply.student has {count_parameters(pupil):,} parameters, {fraction:.2f} of the "
                          f"teacher's; at most {max_student_fraction} is allowed: make it narrower")
    if rounds < 1 or games_per_round < 1:
        raise ConfigError("compress.apply.rounds and games_per_round must be >= 1")
    game = load_game(n, cfg.game.komi, cfg.game.supported_sizes)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(pupil.parameters(), lr=learning_rate)
    planes_seen: list[np.ndarray] = []
    started, steps, losses = time.perf_counter(), 0, []
    for r in range(rounds):
        player = teacher if r == 0 else pupil.eval()   # whose search plays this round's games
        data, _ = self_play(game, NetEvaluator(player, n), n, games_per_round, simulations, rng)
        planes_seen.append(data["planes"])           # the 8 symmetries of every position
        x = torch.from_numpy(np.concatenate(planes_seen))
        with torch.no_grad():
            t_logits, t_value = teacher(x)
        t_logp = F.log_softmax(t_logits / temperature, dim=1)
        pupil.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(batch_size):
                s_logits, s_value = pupil(x[idx])
                kl = F.kl_div(F.log_softmax(s_logits, dim=1), t_logp[idx], reduction="batchmean", log_target=True)
                loss = kl + value_coef * F.mse_loss(s_value, t_value[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                losses.append(float(loss))
        if time.perf_counter() - started > max_seconds:
            break
    pupil.eval()
    return Compressed([pupil], {
        "student_params": float(count_parameters(pupil)), "teacher_params": float(count_parameters(teacher)),
        "student_fraction": fraction, "distill_rounds": float(r + 1), "distill_positions": float(sum(map(len, planes_seen))),
        "distill_steps": float(steps), "distill_final_loss": float(np.mean(losses[-20:])),
        "distill_seconds": time.perf_counter() - started,
    })
