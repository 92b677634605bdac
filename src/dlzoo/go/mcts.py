"""PUCT Monte-Carlo tree search (AlphaGo Zero) over MANY games at once.

Each simulation walks one path down the tree of every game, stopping at a leaf; the leaves of all games that
are not over are evaluated in ONE network batch (`evaluator(states) -> (priors, values)`), then each path is
backed up. So a network call serves up to `len(roots)` positions instead of one (lock-step search).

Values are from the view of the player to move at a node; an edge's `W[a]` sums them from the view of the
player choosing `a`, so a child's value enters its parent negated (Go alternates turns, passes included).
A finished game's value is its real outcome (OpenSpiel's returns), never the network's guess.
"""

from __future__ import annotations

import math

import numpy as np


class Node:
    __slots__ = ("state", "player", "prior", "legal", "N", "W", "children", "terminal_value")

    def __init__(self, state, player: int):
        self.state, self.player = state, player
        self.prior = self.legal = self.N = self.W = None   # set when expanded
        self.children: dict[int, Node] = {}
        self.terminal_value = state.returns()[player] if state.is_terminal() else None

    @property
    def expanded(self) -> bool:
        return self.prior is not None

    def expand(self, prior: np.ndarray) -> None:
        self.legal = np.asarray(self.state.legal_actions_mask(), dtype=bool)[: len(prior)]
        p = np.where(self.legal, prior, 0.0)
        self.prior = p / p.sum() if p.sum() > 0 else self.legal / self.legal.sum()
        self.N, self.W = np.zeros(len(prior)), np.zeros(len(prior))

    def select(self, c_puct: float) -> int:
        """argmax over legal actions of Q(a) + c_puct P(a) sqrt(sum N) / (1 + N(a)); an unvisited edge has Q = 0."""
        q = np.divide(self.W, self.N, out=np.zeros_like(self.W), where=self.N > 0)
        u = c_puct * self.prior * math.sqrt(max(self.N.sum(), 1.0)) / (1.0 + self.N)
        return int(np.argmax(np.where(self.legal, q + u, -np.inf)))

    def child(self, action: int) -> "Node":
        node = self.children.get(action)
        if node is None:
            state = self.state.clone()
            state.apply_action(action)
            node = self.children[action] = Node(state, 1 - self.player)
        return node


def search(states, evaluator, num_simulations: int, c_puct: float = 1.5, dirichlet_alpha: float = 0.0,
           noise_fraction: float = 0.0, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Visit counts at the root of each (unfinished) state after `num_simulations` lock-step simulations.
    With `noise_fraction` > 0, the root priors are mixed with Dirichlet(`dirichlet_alpha`) noise over the
    legal moves (self-play exploration)."""
    roots = [Node(s, s.current_player()) for s in states]
    priors, _ = evaluator([r.state for r in roots])
    for root, prior in zip(roots, priors):
        root.expand(prior)
        if noise_fraction > 0:
            legal = np.flatnonzero(root.legal)
            noise = rng.dirichlet([dirichlet_alpha] * len(legal))
            root.prior[legal] = (1 - noise_fraction) * root.prior[legal] + noise_fraction * noise
    for _ in range(num_simulations):
        paths, leaves = [], []
        for root in roots:
            node, path = root, []
            while node.expanded and node.terminal_value is None:
                action = node.select(c_puct)
                path.append((node, action))
                node = node.child(action)
            paths.append(path)
            leaves.append(node)
        pending = [i for i, leaf in enumerate(leaves) if leaf.terminal_value is None]
        values = np.array([leaf.terminal_value or 0.0 for leaf in leaves], dtype=np.float64)
        if pending:
            priors, net_values = evaluator([leaves[i].state for i in pending])
            for j, i in enumerate(pending):
                leaves[i].expand(priors[j])
                values[i] = net_values[j]
        for path, value in zip(paths, values):
            for node, action in reversed(path):   # the leaf's value, negated at each step up
                value = -value
                node.N[action] += 1
                node.W[action] += value
    return [root.N.copy() for root in roots]


def most_visited(visits: np.ndarray, rng: np.random.Generator) -> int:
    """The most visited action, a tie broken uniformly at random (as AlphaGo Zero does). np.argmax would give every
    tie to the lowest point index: with fewer simulations than legal moves (82 on 9x9) most moves tie at one
    visit, and the player then walks along the first row."""
    best = np.flatnonzero(visits == visits.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def uniform_evaluator(num_actions: int):
    """Priors uniform, values 0: a search that only sees real game ends (the tests' reference searcher)."""
    def evaluate(states):
        return np.full((len(states), num_actions), 1.0 / num_actions), np.zeros(len(states))
    return evaluate
