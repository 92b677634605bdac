"""The AlphaGo (Lee) evaluator (conf/evaluator/go-lee.yaml), called by the generic evaluate stage with the trained
`LeeNets`: `evaluate(model, None, reports_dir, ...) -> (metrics, files)`. The same pairings, game counts, colour
alternation and Wilson intervals as the Zero evaluator (dlzoo.go.evaluate, whose functions it reuses); Lee's
player is the search of dlzoo.go.lee (SL priors, lambda-mixed value network and rollout leaves):
- `test/win_rate_vs_random_net`: the RL policy network alone (argmax, no search) against uniform random;
- `test/win_rate_vs_random_sl_net`: the SL policy network alone against uniform random;
- `test/win_rate_vs_random`: Lee's search against uniform random;
- `test/win_rate_vs_mcts`: Lee's search against OpenSpiel's MCTSBot (random rollouts), equal simulations;
- `test/win_rate_vs_zero`: Lee's search against the alphago-zero family's best network with its search, equal
  simulations, each side's first `sample_moves` moves sampled from its visits (so the games differ);
  Zero's rate against Lee is 1 - this - the draw rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlzoo.checkpoints import load_checkpoint
from dlzoo.errors import ConfigError
from dlzoo.go.evaluate import rates
from dlzoo.go.game import load_game
from dlzoo.go.lee import LeeEvaluator, SensibleEvaluator
from dlzoo.go.net import ZeroNet
from dlzoo.go.players import NetEvaluator, NetPlayer, Pairing, RandomPlayer, RolloutMCTSPlayer, SearchPlayer, play_matches
from dlzoo.go.records import sample_games
from dlzoo.io import write_json


def load_zero(model_dir: str | Path, task: str, board_size: int) -> ZeroNet:
    """The alphago-zero family's best network, its shape read from its own weights."""
    checkpoint = load_checkpoint(Path(model_dir) / "best.ckpt", task, "alphago-zero")
    sd = checkpoint["state_dict"]
    blocks = len({k.split(".")[1] for k in sd if k.startswith("tower.")})
    net = ZeroNet(int(sd["trained_board_size"]), channels=sd["stem.0.weight"].shape[0], blocks=blocks,
                  value_hidden=sd["value_fc.0.weight"].shape[0])
    net.load_state_dict(sd)
    if net.board_size != int(board_size):
        raise ConfigError(f"the alphago-zero checkpoint in {model_dir} was trained on a {net.board_size}x{net.board_size} "
                          f"board, this recipe plays {board_size}x{board_size}")
    return net.eval()


def evaluate(model, datamodule, reports_dir, *, board_size: int, komi: float, supported_sizes, task: str,
             games: int = 200, simulations: int = 64, c_puct: float = 1.5, lam: float = 0.5, mcts_uct_c: float = 2.0,
             mcts_rollouts: int = 1, sample_moves: int = 2, sgf_games: int = 4, seed: int = 2_000_000,
             zero_model_dir: str | None = None, title: str = "", thresholds: dict | None = None,
             workers: int = 1) -> tuple[dict, list]:
    game = load_game(board_size, komi, supported_sizes)
    if int(model.board_size) != int(board_size):
        raise ConfigError(f"the checkpoint was trained on a {model.board_size}x{model.board_size} board, this recipe "
                          f"plays {board_size}x{board_size}: retrain it or pick the recipe of its board")
    zero = load_zero(zero_model_dir, task, board_size) if zero_model_dir else None
    torch.set_num_threads(1)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    metrics, files = {}, []
    leaves = LeeEvaluator(model, board_size, lam, np.random.default_rng(seed + 1))
    lee = SearchPlayer(leaves, simulations, c_puct)
    # The pairings, longest first (the processes take them in order); each has its own seed (seed, k).
    pairings = [("vs_mcts", lee, RolloutMCTSPlayer(game, simulations, mcts_uct_c, mcts_rollouts, seed))]
    if zero is not None:
        pairings.append(("vs_zero", SearchPlayer(leaves, simulations, c_puct, sample_moves),
                         SearchPlayer(NetEvaluator(zero, board_size), simulations, c_puct, sample_moves)))
    pairings += [("vs_random", lee, RandomPlayer()),
                 ("vs_random_net", NetPlayer(SensibleEvaluator(model.rl, board_size)), RandomPlayer()),
                 ("vs_random_sl_net", NetPlayer(SensibleEvaluator(model.sl, board_size)), RandomPlayer())]
    played = play_matches(game, [Pairing(name, a, b, games, (seed, k)) for k, (name, a, b) in enumerate(pairings)], workers)
    for name, *_ in pairings:
        metrics.update(rates(name, played[name][0]))
        metrics[f"test/seconds_{name}"] = round(played[name][1], 1)
    if zero is not None:
        files += sample_games(played["vs_zero"][0][:sgf_games], game, board_size, komi, reports_dir, "vs_zero", "alphago-lee", "alphago-zero")
    metrics["test/simulations"] = float(simulations)
    metrics["test/lambda"] = float(lam)
    metrics["test/leaf_evals_per_s"] = leaves.evaluations / max(leaves.seconds, 1e-9)  # SL + value nets + one rollout
    for key, threshold in (thresholds or {}).items():
        if f"test/{key}" in metrics:
            metrics[f"accept/{key}"] = float(metrics[f"test/{key}"] >= threshold)
    files += sample_games(played["vs_mcts"][0][:sgf_games], game, board_size, komi, reports_dir, "vs_mcts", "alphago-lee", "openspiel-mcts")
    write_json(reports_dir / "summary.json", metrics)
    files.append(reports_dir / "summary.json")
    return metrics, files
