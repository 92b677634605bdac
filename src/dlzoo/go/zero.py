"""The AlphaGo Zero runner (conf/experiment/go-5x5-alphago-zero.yaml): `train(cfg, ctx, **runner) -> dict`.

Generation 0 is the randomly initialised network, the first "best". Each generation then
1. self-play: the best network plays `games_per_generation` games against itself (dlzoo.go.selfplay);
2. the examples join a replay window of the last `window_generations` generations;
3. the learner (trained on, never reset) takes `train_steps` minibatch steps on the window:
   loss = (z - v)^2 - π·log p, L2 by weight decay;
4. gating: the learner plays `arena_games` games against the best (colours alternated, search on both sides)
   and replaces it only if it wins at least `gate_win_rate` of them.
Each generation is one learning-curve row; every generation's learner is kept in <model_dir>/generations/
(the evaluator's Elo ladder reads them), and the checkpoint is always the best (gated) network.
"""

from __future__ import annotations

import copy
import csv
import inspect
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlzoo.config import build
from dlzoo.errors import ConfigError
from dlzoo.go.game import load_game
from dlzoo.go.net import cpu_state, go_device
from dlzoo.go.parallel import split_sizes
from dlzoo.go.players import NetEvaluator, NetPlayer, Pairing, RandomPlayer, SearchPlayer, play_matches
from dlzoo.go.selfplay import self_play_parts

GENERATIONS_DIR = "generations"        # in the model dir: gen_000.pt, gen_001.pt, ... (state_dicts)
GENERATIONS_CSV = "generations.csv"    # in the model dir: one row per generation (gating, throughput)


def check_args(fn, unknown: dict, **positive) -> None:
    """One-line refusals before anything is built or any run opened: unknown runner keys, non-positive sizes."""
    if unknown:
        accepted = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY]
        raise ConfigError(f"unknown runner key(s) {', '.join('runner.' + k for k in sorted(unknown))} for "
                          f"{fn.__module__}.{fn.__name__}; it accepts: {', '.join(accepted)}")
    for key, value in positive.items():
        if value is None or not value > 0:
            raise ConfigError(f"runner.{key} must be positive, got {value!r}")


def _win_rate(games) -> float:
    return float(np.mean([g.a_won for g in games]))


def train_step(net, opt, planes: torch.Tensor, pi: torch.Tensor, z: torch.Tensor) -> dict:
    logits, v = net(planes)
    value_loss = F.mse_loss(v, z)
    policy_loss = -(pi * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss = value_loss + policy_loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"loss": loss.item(), "value_loss": value_loss.item(), "policy_loss": policy_loss.item()}


def train(cfg, ctx, *, generations: int, games_per_generation: int, simulations: int, train_steps: int,
          batch_size: int = 256, learning_rate: float = 1e-3, weight_decay: float = 1e-4, window_generations: int = 8,
          c_puct: float = 1.5, dirichlet_alpha: float = 0.5, noise_fraction: float = 0.25, temperature_moves: int = 6,
          arena_games: int = 40, arena_simulations: int = 32, arena_sample_moves: int = 2, gate_win_rate: float = 0.55,
          val_games: int = 50, max_seconds: float = 1e9, threads: int = 1, workers: int = 2, **unknown) -> dict:
    check_args(train, unknown, generations=generations, games_per_generation=games_per_generation,
               simulations=simulations, train_steps=train_steps, batch_size=batch_size, window_generations=window_generations,
               arena_games=arena_games, arena_simulations=arena_simulations, val_games=val_games, max_seconds=max_seconds,
               workers=workers)
    if not 0.5 <= gate_win_rate <= 1.0:
        raise ConfigError(f"runner.gate_win_rate must lie in [0.5, 1], got {gate_win_rate!r}")
    n = int(cfg.game.board_size)
    game = load_game(n, cfg.game.komi, cfg.game.supported_sizes)   # refuses an unsupported board size first
    device = go_device(cfg.trainer.get("accelerator", "cpu"))
    learner = build(cfg.model, "model").to(device)
    processes = workers if device.type == "cpu" else 1   # forked processes cannot share a CUDA context
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if ctx.is_main and ctx.run_id is not None:
        from dlzoo.tracking import client

        client(ctx.tracking_uri).log_param(ctx.run_id, "hardware/torch_threads", threads)
        client(ctx.tracking_uri).log_param(ctx.run_id, "hardware/go_device", str(device))
        client(ctx.tracking_uri).log_param(ctx.run_id, "hardware/go_processes", processes)
    ctx.total_epochs = generations
    gen_dir = Path(ctx.model_dir) / GENERATIONS_DIR
    gen_dir.mkdir(parents=True, exist_ok=True)
    best = copy.deepcopy(learner).eval()
    best_generation = 0
    torch.save(cpu_state(best), gen_dir / "gen_000.pt")
    ctx.save_checkpoint(cpu_state(best), 0, board_size=n, generation=0)
    opt = torch.optim.Adam(learner.parameters(), lr=learning_rate, weight_decay=weight_decay)
    # The best network's games against random, played once per network: by each learner beside its gating arena
    # (both cores busy), kept if the learner is accepted. Generation 0's from a seed outside the runner's stream.
    best_vs_random = _win_rate(play_matches(game, [Pairing("vs_random", NetPlayer(NetEvaluator(best, n)),
                                                           RandomPlayer(), val_games, (cfg.seed, 0))])["vs_random"][0])
    window: list[dict] = []
    rows, totals = [], {"positions": 0, "selfplay_seconds": 0.0, "evaluations": 0, "eval_seconds": 0.0}
    start, stopped_by = time.perf_counter(), "generations"
    for gen in range(1, generations + 1):
        if time.perf_counter() - start >= max_seconds:
            stopped_by = "max_seconds"
            break
        # 1-2. self-play by the best network, into the replay window (in `workers` parts, each with its own seed)
        data, sp = self_play_parts(game, lambda net=best: NetEvaluator(net, n), n, games_per_generation, simulations,
                                   rng.integers(0, 2**63 - 1, size=workers), processes, c_puct=c_puct,
                                   dirichlet_alpha=dirichlet_alpha, noise_fraction=noise_fraction,
                                   temperature_moves=temperature_moves)
        totals["positions"] += sp["positions"]
        totals["selfplay_seconds"] += sp["seconds"]
        totals["evaluations"] += sp["evaluations"]
        totals["eval_seconds"] += sp["eval_seconds"]
        window = (window + [data])[-window_generations:]
        planes = torch.from_numpy(np.concatenate([d["planes"] for d in window]))
        pis = torch.from_numpy(np.concatenate([d["pi"] for d in window]))
        zs = torch.from_numpy(np.concatenate([d["z"] for d in window]))
        # 3. train the learner on the window
        t0 = time.perf_counter()
        learner.train()
        losses = []
        for _ in range(train_steps):
            idx = torch.from_numpy(rng.integers(0, len(zs), size=batch_size))
            losses.append(train_step(learner, opt, planes[idx].to(device), pis[idx].to(device), zs[idx].to(device)))
        learner.eval()
        train_seconds = time.perf_counter() - t0
        torch.save(cpu_state(learner), gen_dir / f"gen_{gen:03d}.pt")
        # 4. gating: learner against the best, search on both sides (the arena in `workers` parts), and the
        # learner alone against random
        t0 = time.perf_counter()
        learner_player = SearchPlayer(NetEvaluator(learner, n), arena_simulations, c_puct, arena_sample_moves)
        best_player = SearchPlayer(NetEvaluator(best, n), arena_simulations, c_puct, arena_sample_moves)
        sizes = split_sizes(arena_games, workers, multiple=2)
        seeds = rng.integers(0, 2**63 - 1, size=len(sizes) + 1)
        parts = [Pairing(f"arena_{k}", learner_player, best_player, size, seeds[k]) for k, size in enumerate(sizes)]
        played = play_matches(game, parts + [Pairing("vs_random", NetPlayer(NetEvaluator(learner, n)), RandomPlayer(),
                                                     val_games, seeds[-1])], processes)
        arena_rate = _win_rate([g for p in parts for g in played[p.name][0]])
        accepted = arena_rate >= gate_win_rate
        if accepted:
            best, best_generation = copy.deepcopy(learner).eval(), gen
            best_vs_random = _win_rate(played["vs_random"][0])
        arena_seconds = time.perf_counter() - t0
        mean = {k: float(np.mean([l[k] for l in losses])) for k in losses[0]}
        row = {"epoch": gen - 1, "generation": gen, "seconds": round(time.perf_counter() - start, 1),
               **{f"train/{k}": v for k, v in mean.items()},
               "train/selfplay_positions": sp["positions"], "train/selfplay_black_win_rate": sp["black_win_rate"],
               "train/positions_per_s": sp["positions_per_s"], "train/evals_per_s": sp["evals_per_s"],
               "train/window_examples": len(zs),
               "val/arena_win_rate": arena_rate, "val/accepted": float(accepted), "val/best_generation": best_generation,
               "val/net_win_rate_vs_random": best_vs_random,   # the best network's, after gating
               "val/learner_win_rate_vs_random": _win_rate(played["vs_random"][0])}
        rows.append({**row, "selfplay_seconds": round(sp["seconds"], 2), "train_seconds": round(train_seconds, 2),
                     "arena_seconds": round(arena_seconds, 2)})
        ctx.log_metrics({k: v for k, v in row.items() if "/" in k}, step=gen)
        ctx.end_epoch(row)
        if accepted:
            ctx.save_checkpoint(cpu_state(best), best_generation, board_size=n, generation=best_generation)
    with open(Path(ctx.model_dir) / GENERATIONS_CSV, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[-1]))
            w.writeheader()
            w.writerows(rows)
    best = best.cpu()   # the logged model and its example live on the CPU
    example = torch.zeros(1, best.stem[0].in_channels, n, n)
    return {"checkpoint": str(ctx.checkpoint_path), "best_score": ctx.best_score, "best_generation": best_generation,
            "generations": len(rows), "accepted": int(sum(r["val/accepted"] for r in rows)), "stopped_by": stopped_by,
            "board_size": n, "komi": float(cfg.game.komi), "selfplay_positions": totals["positions"],
            "selfplay_positions_per_s": totals["positions"] / max(totals["selfplay_seconds"], 1e-9),
            "net_evals_per_s": totals["evaluations"] / max(totals["selfplay_seconds"], 1e-9),
            "net_evals_per_s_in_network": totals["evaluations"] / max(totals["eval_seconds"], 1e-9),
            "model": best, "example": example}
