"""Players, and matches between two of them played in lock-step (every unfinished game moves at once).

A player is `choose(states, rng) -> actions` for a list of states where it is to move:
- `RandomPlayer`: a uniform choice among the legal moves (the pass included);
- `NetPlayer`: the network alone, the argmax of its policy over the legal moves, no search;
- `SearchPlayer`: PUCT search (dlzoo.go.mcts) with the network, the most-visited move (a tie at random)
  (`sample_moves` > 0: the first moves of a game sampled in proportion to the visits, so that two
  deterministic players do not replay one game);
- `RolloutMCTSPlayer`: OpenSpiel's MCTSBot with random rollouts (the classic baseline), one state at a time.

`play_matches` plays several pairings in parallel processes (dlzoo.go.parallel), each from its own seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dlzoo.go.game import encode
from dlzoo.go.mcts import most_visited, search
from dlzoo.go.parallel import fork_map


class NetEvaluator:
    """states -> (priors over legal moves, values) in one batch; counts evaluations and their seconds."""

    def __init__(self, net: torch.nn.Module, board_size: int):
        self.net, self.board_size = net.eval(), board_size
        self.device = next(net.parameters()).device   # the batch goes where the network is (a GPU on profile=full)
        self.num_actions = board_size * board_size + 1
        self.evaluations, self.seconds = 0, 0.0

    @torch.no_grad()
    def __call__(self, states) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        x = torch.from_numpy(np.stack([encode(s, self.board_size) for s in states])).to(self.device)
        logits, values = self.net(x)
        legal = torch.from_numpy(np.stack([np.asarray(s.legal_actions_mask(), dtype=bool)[: self.num_actions] for s in states]))
        priors = torch.softmax(logits.float().cpu().masked_fill(~legal, -1e9), dim=1)
        self.evaluations += len(states)
        self.seconds += time.perf_counter() - start
        return priors.numpy().astype(np.float64), values.float().cpu().numpy().astype(np.float64)


class RandomPlayer:
    name = "random"

    def choose(self, states, rng):
        return [int(rng.choice(s.legal_actions())) for s in states]


class NetPlayer:
    name = "net"

    def __init__(self, evaluator: NetEvaluator):
        self.evaluator = evaluator

    def choose(self, states, rng):
        priors, _ = self.evaluator(states)
        return [int(np.argmax(p)) for p in priors]


class SearchPlayer:
    name = "net+search"

    def __init__(self, evaluator: NetEvaluator, simulations: int, c_puct: float = 1.5, sample_moves: int = 0):
        self.evaluator, self.simulations, self.c_puct, self.sample_moves = evaluator, simulations, c_puct, sample_moves

    def choose(self, states, rng):
        visits = search(states, self.evaluator, self.simulations, self.c_puct)
        actions = []
        for s, n in zip(states, visits):
            if s.move_number() < self.sample_moves * 2:   # each player's first `sample_moves` moves
                actions.append(int(rng.choice(len(n), p=n / n.sum())))
            else:
                actions.append(most_visited(n, rng))
        return actions


class RolloutMCTSPlayer:
    """OpenSpiel's MCTSBot: UCT with `rollouts` uniformly random playouts per leaf (solve=True: proven wins/losses
    are backed up exactly, as the library does by default)."""
    name = "mcts"

    def __init__(self, game, simulations: int, uct_c: float = 2.0, rollouts: int = 1, seed: int = 0):
        from open_spiel.python.algorithms import mcts

        rs = np.random.RandomState(seed)
        self.bot = mcts.MCTSBot(game, uct_c, simulations, mcts.RandomRolloutEvaluator(rollouts, rs), random_state=rs)

    def choose(self, states, rng):
        return [int(self.bot.step(s)) for s in states]


@dataclass
class Game:
    a_black: bool                 # player A plays Black
    moves: list[int] = field(default_factory=list)
    returns: tuple[float, float] | None = None   # (Black, White)

    @property
    def a_won(self) -> bool:
        return (self.returns[0] > 0) == self.a_black


def play_match(game, a, b, num_games: int, rng: np.random.Generator) -> list[Game]:
    """`num_games` games of A against B with the colours alternated (A is Black in games 0, 2, 4, ...)."""
    games = [Game(a_black=(i % 2 == 0)) for i in range(num_games)]
    states = [game.new_initial_state() for _ in games]
    while True:
        live = [i for i, s in enumerate(states) if not s.is_terminal()]
        if not live:
            break
        for player in (a, b):
            mine = [i for i in live if not states[i].is_terminal()
                    and (states[i].current_player() == 0) == (games[i].a_black == (player is a))]
            if mine:
                for i, action in zip(mine, player.choose([states[i] for i in mine], rng)):
                    states[i].apply_action(action)
                    games[i].moves.append(action)
    for g, s in zip(games, states):
        g.returns = tuple(s.returns())
    return games


@dataclass
class Pairing:
    name: str
    a: object
    b: object
    games: int
    seed: int | tuple   # np.random.default_rng(seed) plays this pairing's random choices


def _evaluators(pairing: Pairing) -> list:
    """The distinct leaf evaluators of a pairing's players (whose counters the parent keeps)."""
    found = [getattr(p, "evaluator", None) for p in (pairing.a, pairing.b)]
    return [e for k, e in enumerate(found) if e is not None and hasattr(e, "evaluations") and e not in found[:k]]


def _play_pairing(game, pairing: Pairing) -> tuple[list[Game], float, list[tuple[int, float]]]:
    evaluators = _evaluators(pairing)
    before = [(e.evaluations, e.seconds) for e in evaluators]
    t0 = time.perf_counter()
    games = play_match(game, pairing.a, pairing.b, pairing.games, np.random.default_rng(pairing.seed))
    return games, time.perf_counter() - t0, [(e.evaluations - n, e.seconds - s) for e, (n, s) in zip(evaluators, before)]


def play_matches(game, pairings: list[Pairing], workers: int = 1) -> dict[str, tuple[list[Game], float]]:
    """name -> (games, seconds) of each pairing, played in up to `workers` processes (dlzoo.go.parallel; list
    the longest first). Each pairing's games depend only on its seed. The evaluators' counters (evaluations,
    seconds) of a pairing played in a child are added to the parent's objects."""
    results = fork_map(_play_pairing, [(game, p) for p in pairings], workers)
    forked = workers > 1 and len(pairings) > 1
    out = {}
    for pairing, (games, seconds, counts) in zip(pairings, results):
        for e, (n, s) in zip(_evaluators(pairing), counts if forked else []):
            e.evaluations += n
            e.seconds += s
        out[pairing.name] = (games, seconds)
    return out
