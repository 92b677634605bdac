"""Self-play: the best network plays `num_games` games against itself, all in lock-step, each move chosen by
PUCT search with Dirichlet noise at the root. Every position gives a training example (planes from the view of
the player to move, the search policy π = visit counts / their sum, and z = the game's outcome for that
player); the 8 board symmetries multiply them (dlzoo.go.game.augment). `self_play_parts` splits the games into
parts, each from its own seed, played in parallel processes (dlzoo.go.parallel)."""

from __future__ import annotations

import time

import numpy as np

from dlzoo.go.game import augment, encode
from dlzoo.go.mcts import most_visited, search
from dlzoo.go.parallel import fork_map, split_sizes


def self_play(game, evaluator, board_size: int, num_games: int, simulations: int, rng: np.random.Generator, *,
              c_puct: float = 1.5, dirichlet_alpha: float = 0.5, noise_fraction: float = 0.25,
              temperature_moves: int = 6, augment_symmetries: bool = True) -> tuple[dict, dict]:
    """({"planes", "pi", "z"} arrays, stats). The first `temperature_moves` moves of each game are sampled in
    proportion to the visits (temperature 1), the later ones are the most visited (ties at random)."""
    start, evals0, eval_seconds0 = time.perf_counter(), evaluator.evaluations, evaluator.seconds
    states = [game.new_initial_state() for _ in range(num_games)]
    records = [[] for _ in range(num_games)]   # per game: (planes, pi, player to move)
    while True:
        live = [i for i, s in enumerate(states) if not s.is_terminal()]
        if not live:
            break
        visits = search([states[i] for i in live], evaluator, simulations, c_puct, dirichlet_alpha, noise_fraction, rng)
        for i, n in zip(live, visits):
            s = states[i]
            pi = n / n.sum()
            records[i].append((encode(s, board_size), pi, s.current_player()))
            action = rng.choice(len(pi), p=pi) if s.move_number() < temperature_moves else most_visited(n, rng)
            s.apply_action(int(action))
    planes, pis, zs = [], [], []
    black_wins = 0
    for s, rec in zip(states, records):
        returns = s.returns()
        black_wins += returns[0] > 0
        for p, pi, player in rec:
            planes.append(p)
            pis.append(pi)
            zs.append(returns[player])
    planes, pis, zs = np.stack(planes), np.stack(pis).astype(np.float32), np.asarray(zs, dtype=np.float32)
    positions = len(zs)
    if augment_symmetries:
        planes, pis = augment(planes, pis, board_size)
        zs = np.tile(zs, 8)
    seconds = time.perf_counter() - start
    stats = {"positions": positions, "games": num_games, "seconds": seconds,
             "positions_per_s": positions / seconds, "evals_per_s": (evaluator.evaluations - evals0) / seconds,
             "black_win_rate": black_wins / num_games, "mean_length": positions / num_games,
             "evaluations": evaluator.evaluations - evals0, "eval_seconds": evaluator.seconds - eval_seconds0}
    return {"planes": planes, "pi": pis, "z": zs}, stats


def self_play_parts(game, make_evaluator, board_size: int, num_games: int, simulations: int, seeds, workers: int,
                    **options) -> tuple[dict, dict]:
    """`self_play` of num_games split into len(seeds) parts (part k from np.random.default_rng(seeds[k])), in up
    to `workers` processes: the same data whatever `workers` is. `make_evaluator()` builds each part's evaluator."""
    sizes = split_sizes(num_games, len(seeds))
    start = time.perf_counter()
    results = fork_map(_part, [(game, make_evaluator, board_size, size, simulations, seed, options)
                               for size, seed in zip(sizes, seeds)], workers)
    seconds = time.perf_counter() - start
    data = {key: np.concatenate([d[key] for d, _ in results]) for key in ("planes", "pi", "z")}
    total = {key: sum(st[key] for _, st in results) for key in ("positions", "games", "evaluations", "eval_seconds")}
    black_wins = sum(st["black_win_rate"] * st["games"] for _, st in results)
    return data, {**total, "seconds": seconds, "positions_per_s": total["positions"] / seconds,
                  "evals_per_s": total["evaluations"] / seconds, "black_win_rate": black_wins / total["games"],
                  "mean_length": total["positions"] / total["games"]}


def _part(game, make_evaluator, board_size, num_games, simulations, seed, options):
    return self_play(game, make_evaluator(), board_size, num_games, simulations, np.random.default_rng(seed), **options)
