"""The Go evaluator (conf/evaluator/go.yaml), called by the generic evaluate stage with the best (gated)
network: `evaluate(model, None, reports_dir, ...) -> (metrics, files)`.

Every pairing is `games` games with the colours alternated, reported overall and per colour, each rate
with its 95% Wilson interval (`_ci_low`, `_ci_high`):
- `test/win_rate_vs_random_net`: the network alone (argmax of the policy, no search) against uniform random;
- `test/win_rate_vs_random`: the network with `simulations` of PUCT search against uniform random;
- `test/win_rate_vs_mcts`: the network with search against OpenSpiel's MCTSBot with random rollouts at the
  same number of simulations per move (the headline);
- `test/win_rate_last_vs_first`: the final network against the first trained generation (both with search);
- an Elo ladder over the generations the runner kept (round robin, Bradley-Terry fit, generation 0 = 0 Elo),
  as a plot and a CSV; sample games as SGF and as board images; the acceptance thresholds of the recipe,
  each met or not (`accept/*`).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch

from dlzoo.errors import ConfigError
from dlzoo.go.game import load_game
from dlzoo.go.net import ZeroNet, go_device
from dlzoo.go.players import NetEvaluator, NetPlayer, Pairing, RandomPlayer, RolloutMCTSPlayer, SearchPlayer, play_matches
from dlzoo.go.records import sample_games
from dlzoo.go.zero import GENERATIONS_CSV, GENERATIONS_DIR
from dlzoo.io import write_json


def wilson(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (sound near 0 and 1, unlike the normal interval)."""
    if n == 0:
        return float("nan"), float("nan")
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(name: str, games) -> dict:
    """test/win_rate_<name> with its interval, and the same as Black and as White."""
    out = {}
    for suffix, subset in (("", games), ("_as_black", [g for g in games if g.a_black]),
                           ("_as_white", [g for g in games if not g.a_black])):
        wins, n = sum(g.a_won for g in subset), len(subset)
        low, high = wilson(wins, n)
        key = f"test/win_rate_{name}{suffix}"
        out.update({key: wins / n if n else float("nan"), f"{key}_ci_low": low, f"{key}_ci_high": high})
    out[f"test/games_{name}"] = float(len(games))
    # OpenSpiel ends a game that repeats a whole-board position (positional superko) as a draw, returns (0, 0):
    # a draw is not a win
    out[f"test/draw_rate_{name}"] = sum(g.returns[0] == 0 for g in games) / len(games) if games else float("nan")
    return out


def elo_fit(names: list, results: dict, iterations: int = 2000) -> np.ndarray:
    """Bradley-Terry ratings by gradient ascent on the log-posterior; results[(i, j)] = (wins of i, games).
    A weak Gaussian prior on each rating (sd 400·√2 ≈ 566 Elo) keeps an unbeaten player finite; player 0 = 0 Elo."""
    r = np.zeros(len(names))
    for _ in range(iterations):
        grad = -r / 400.0 ** 2 * 0.5
        for (i, j), (w, n) in results.items():
            p = 1.0 / (1.0 + 10 ** ((r[j] - r[i]) / 400.0))
            grad[i] += (w - n * p) * math.log(10) / 400.0
            grad[j] -= (w - n * p) * math.log(10) / 400.0
        r += 2000.0 * grad / max(1, sum(n for _, n in results.values()) / len(names))
        r -= r[0]
    return r


def evaluate(model, datamodule, reports_dir, *, board_size: int, komi: float, supported_sizes, games: int = 200,
             simulations: int = 64, c_puct: float = 1.5, mcts_uct_c: float = 2.0, mcts_rollouts: int = 1,
             elo_players: int = 6, elo_games: int = 20, elo_simulations: int = 16, sample_moves: int = 2,
             sgf_games: int = 4, seed: int = 2_000_000, model_dir: str | None = None, title: str = "",
             thresholds: dict | None = None, parent_dir: str | None = None, parent_games: int = 0,
             accelerator: str = "cpu", workers: int = 1) -> tuple[dict, list]:
    game = load_game(board_size, komi, supported_sizes)
    if int(model.board_size) != int(board_size):
        raise ConfigError(f"the checkpoint was trained on a {model.board_size}x{model.board_size} board, this recipe "
                          f"plays {board_size}x{board_size}: retrain it or pick the recipe of its board")
    torch.set_num_threads(1)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    device = go_device(accelerator)
    model.to(device).eval()   # the generations and the parent below are loaded like it, onto its device
    workers = workers if device.type == "cpu" else 1   # forked processes cannot share a CUDA context
    metrics, files = {}, []
    net = NetEvaluator(model, board_size)
    search = SearchPlayer(net, simulations, c_puct)
    # The pairings, longest first (the processes take them in order); each has its own seed (seed, k).
    pairings = [("vs_mcts", search, RolloutMCTSPlayer(game, simulations, mcts_uct_c, mcts_rollouts, seed), games)]
    gen_files = sorted((Path(model_dir) / GENERATIONS_DIR).glob("gen_*.pt")) if model_dir else []
    if len(gen_files) >= 2:
        first = _load_like(model, gen_files[1])   # the first TRAINED generation (gen 0 is the random init)
        pairings.append(("last_vs_first", SearchPlayer(net, simulations, c_puct, sample_moves),
                         SearchPlayer(NetEvaluator(first, board_size), simulations, c_puct, sample_moves), games))
    if parent_games > 0:
        # The compress stage's arena: this network against the uncompressed one (parent_dir's checkpoint) at equal
        # simulations; the parent measured against itself is the arena's own check (about 0.5).
        parent = NetEvaluator(load_zero_net(Path(parent_dir) / "best.ckpt").to(device), board_size)
        pairings.append(("vs_parent", SearchPlayer(net, simulations, c_puct, sample_moves),
                         SearchPlayer(parent, simulations, c_puct, sample_moves), parent_games))
    pairings += [("vs_random", search, RandomPlayer(), games), ("vs_random_net", NetPlayer(net), RandomPlayer(), games)]
    ladder = _elo_pairings(model, board_size, gen_files, elo_players, elo_games, elo_simulations, c_puct, sample_moves)
    played = play_matches(game, [Pairing(name, a, b, n, (seed, k)) for k, (name, a, b, n) in enumerate(pairings + ladder)],
                          workers)
    for name, *_ in pairings:
        metrics.update(rates(name, played[name][0]))
        metrics[f"test/seconds_{name}"] = round(played[name][1], 1)
    metrics["test/simulations"] = float(simulations)
    metrics["test/net_evals_per_s"] = net.evaluations / max(net.seconds, 1e-9)   # inside the network calls only
    if ladder:
        files += _elo_ladder(ladder, played, elo_games, elo_simulations, metrics, reports_dir, title)
    vs_mcts = played["vs_mcts"][0]
    summary_path = Path(model_dir) / "train_summary.json" if model_dir else None
    if summary_path and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        for key in ("selfplay_positions_per_s", "net_evals_per_s", "generations", "accepted", "train_seconds"):
            if key in summary:
                metrics[f"train/{key}"] = float(summary[key])
    for key, threshold in (thresholds or {}).items():
        if f"test/{key}" in metrics:
            metrics[f"accept/{key}"] = float(metrics[f"test/{key}"] >= threshold)

    files += sample_games(vs_mcts[: sgf_games], game, board_size, komi, reports_dir, "vs_mcts", "alphago-zero", "openspiel-mcts")
    files.append(_write_games_csv(reports_dir / "vs_mcts_games.csv", vs_mcts))
    write_json(reports_dir / "summary.json", metrics)
    files.append(reports_dir / "summary.json")
    return metrics, files


def load_zero_net(path: Path) -> ZeroNet:
    """A ZeroNet of whatever width and depth the checkpoint's weights have (a parent seen from its student)."""
    if not path.is_file():
        raise ConfigError(f"no parent checkpoint at {path}: run the family's train stage first")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    blocks = len({k.split(".")[1] for k in state if k.startswith("tower.")})
    net = ZeroNet(int(state["trained_board_size"]), channels=state["stem.0.weight"].shape[0], blocks=blocks,
                  value_hidden=state["value_fc.0.weight"].shape[0])
    net.load_state_dict(state)
    return net.eval()


def _load_like(model, path: Path):
    import copy

    other = copy.deepcopy(model)
    other.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return other.eval()


def _elo_pairings(model, n, gen_files, players, games, sims, c_puct, sample_moves) -> list[tuple]:
    """The Elo round robin: up to `players` generations spread evenly from 0 to the last, every pair of them."""
    if len(gen_files) < 2:
        return []
    picks = sorted(set(np.linspace(0, len(gen_files) - 1, min(players, len(gen_files))).round().astype(int)))
    nets = {g: NetEvaluator(_load_like(model, gen_files[g]), n) for g in picks}
    return [(f"elo_{picks[i]}_{picks[j]}", SearchPlayer(nets[picks[i]], sims, c_puct, sample_moves),
             SearchPlayer(nets[picks[j]], sims, c_puct, sample_moves), games)
            for i, j in itertools.combinations(range(len(picks)), 2)]


def _elo_ladder(ladder, played, games, sims, metrics, reports_dir, title) -> list:
    """A Bradley-Terry fit of the round robin's results, as metrics, a CSV and a plot."""
    picks = sorted({int(g) for name, *_ in ladder for g in name.split("_")[1:]})
    index = {g: k for k, g in enumerate(picks)}
    results = {}
    for name, *_ in ladder:
        gi, gj = (int(g) for g in name.split("_")[1:])
        games_ij = played[name][0]
        results[(index[gi], index[gj])] = (sum(g.a_won for g in games_ij), len(games_ij))
    elo = elo_fit(picks, results)
    metrics["test/elo_first"], metrics["test/elo_last"] = float(elo[0]), float(elo[-1])
    metrics["test/elo_rises"] = float(all(b >= a - 50 for a, b in zip(elo, elo[1:])) and elo[-1] > elo[0])
    path_csv = reports_dir / "elo.csv"
    with open(path_csv, "w", newline="") as f:
        csv.writer(f).writerows([("generation", "elo"), *[(g, round(float(e), 1)) for g, e in zip(picks, elo)]])
    from dlzoo.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(picks, elo, "o-")
    ax.set_xlabel("generation")
    ax.set_ylabel("Elo (generation 0 = 0)")
    ax.set_title(f"{title}: Elo ladder ({games} games per pair, {sims} simulations)", fontsize=9)
    ax.grid(alpha=0.3)
    return [path_csv, save_figure(fig, reports_dir / "elo.png")]


def _write_games_csv(path: Path, games) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["game", "net_black", "net_won", "moves", "black_return"])
        w.writerows((k, int(g.a_black), int(g.a_won), len(g.moves), g.returns[0]) for k, g in enumerate(games))
    return path
