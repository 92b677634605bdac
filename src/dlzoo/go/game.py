"""The Go rules come from OpenSpiel (`pyspiel.load_game("go", ...)`), never from hand-written code here.
This module only loads the game, turns states into the planes the network reads, and maps the 8 symmetries
of the square board onto planes and onto policy vectors alike.

Actions: point (row r, column c) is action r * N + c (row 0 is the board's first line, "A1" = action 0) and
the pass is action N * N; observation planes use the same (r, c), so a plane index and an action agree.
"""

from __future__ import annotations

import numpy as np

from dlzoo.errors import ConfigError

PLANES = 4  # own stones, opponent stones, "black to play" (komi makes the colours unequal), ones (the board's edge)


def load_game(board_size: int, komi: float, supported=(5, 9), max_game_length: int | None = None):
    """The OpenSpiel Go game, refusing a board size the recipe does not list (one line)."""
    import pyspiel

    if int(board_size) not in [int(s) for s in supported]:
        raise ConfigError(f"board size {board_size} is not supported by this recipe (game.supported_sizes: "
                          f"{', '.join(map(str, supported))})")
    params = {"board_size": int(board_size), "komi": float(komi)}
    if max_game_length is not None:
        params["max_game_length"] = int(max_game_length)
    return pyspiel.load_game("go", params)


def encode(state, board_size: int) -> np.ndarray:
    """(PLANES, N, N) float32 planes from the view of the player to move."""
    n = board_size
    obs = np.asarray(state.observation_tensor(0), dtype=np.float32).reshape(4, n, n)  # black, white, empty, white-to-play
    to_play = state.current_player()
    own, opp = (obs[0], obs[1]) if to_play == 0 else (obs[1], obs[0])
    black = np.full((n, n), 1.0 if to_play == 0 else 0.0, dtype=np.float32)
    return np.stack([own, opp, black, np.ones((n, n), dtype=np.float32)])


def legal_mask(state, num_actions: int) -> np.ndarray:
    return np.asarray(state.legal_actions_mask(), dtype=bool)[:num_actions]


# ---- the dihedral group of the square: 4 rotations, each optionally mirrored; the pass never moves
def transform_board(x: np.ndarray, k: int) -> np.ndarray:
    """Symmetry k (0..7) of the last two (row, column) axes of `x`."""
    y = np.rot90(x, k % 4, axes=(-2, -1))
    return np.flip(y, axis=-1) if k >= 4 else y


def transform_policy(pi: np.ndarray, k: int, board_size: int) -> np.ndarray:
    """Symmetry k of a policy vector over N*N points + pass (the same map as `transform_board` of its points)."""
    n = board_size
    points = transform_board(pi[..., : n * n].reshape(*pi.shape[:-1], n, n), k).reshape(*pi.shape[:-1], n * n)
    return np.concatenate([points, pi[..., n * n:]], axis=-1)


def augment(planes: np.ndarray, pis: np.ndarray, board_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 8 symmetries of a batch: (8B, C, N, N) planes and their (8B, N*N+1) policy targets, aligned."""
    boards = [transform_board(planes, k) for k in range(8)]
    targets = [transform_policy(pis, k, board_size) for k in range(8)]
    return np.ascontiguousarray(np.concatenate(boards)), np.ascontiguousarray(np.concatenate(targets))
