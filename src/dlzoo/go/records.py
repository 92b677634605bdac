"""Sample games as records a person can replay: SGF files (sgfmill) and final-position images, for every Go evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_games(games, game, n: int, komi: float, reports_dir: Path, name: str, player: str, opponent: str) -> list:
    """Each game as SGF (sgfmill), `player` (side a of the match) and `opponent` named by the colour each had, and
    its final position as an image. A game OpenSpiel ended without a winner (a superko repetition) is a draw, RE 0."""
    from sgfmill import sgf

    from dlzoo.plotting import plt, save_figure

    files = []
    for k, g in enumerate(games):
        record = sgf.Sgf_game(size=n)
        root = record.get_root()
        root.set("KM", float(komi))
        root.set("PB", player if g.a_black else opponent)
        root.set("PW", opponent if g.a_black else player)
        root.set("RE", "B+" if g.returns[0] > 0 else "W+" if g.returns[0] < 0 else "0")
        state = game.new_initial_state()
        for action in g.moves:
            colour = "b" if state.current_player() == 0 else "w"
            record.extend_main_sequence().set_move(colour, None if action == n * n else divmod(action, n))
            state.apply_action(action)
        path = reports_dir / f"{name}_game{k}.sgf"
        path.write_bytes(record.serialise())
        files.append(path)
        planes = np.asarray(state.observation_tensor(0)).reshape(4, n, n)   # black, white, empty, to-play
        fig, ax = plt.subplots(figsize=(3.2, 3.4))
        ax.set_facecolor("#dcb35c")
        for i in range(n):
            ax.plot([0, n - 1], [i, i], color="black", lw=0.8)
            ax.plot([i, i], [0, n - 1], color="black", lw=0.8)
        for colour, plane in (("black", planes[0]), ("white", planes[1])):
            for r, c in zip(*np.nonzero(plane)):
                ax.add_patch(plt.Circle((c, r), 0.42, facecolor=colour, edgecolor="black"))
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_aspect("equal")
        ax.set_xticks(range(n), "ABCDEFGHJ"[:n])
        ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
        ax.set_title(f"{root.get('PB')} (B) v {root.get('PW')} (W)\n{root.get('RE')}, {len(g.moves)} moves, komi {komi}",
                     fontsize=7)
        files.append(save_figure(fig, reports_dir / f"{name}_game{k}.png"))
    return files
