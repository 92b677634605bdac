"""The model side of the demo's "Play Go" tab: a person plays the AlphaGo Zero champion on its own board (no UI here).

Zero moves exactly as the Go evaluator's search player does (dlzoo.go.evaluate: `SearchPlayer(NetEvaluator(net, N),
evaluator.simulations, evaluator.c_puct)`, the most-visited move, no sampling), at the recipe's evaluation budget.
OpenSpiel is the referee: legality, captures, ko, the end of the game and its result are its answers.

Points are (row, column) as in dlzoo.go.game: row 0 is the board's first line ("A1" = (0, 0)), drawn at the bottom
as in OpenSpiel's and sgfmill's boards; the pass is the string "pass".
"""

from __future__ import annotations

import numpy as np

from dlzoo.errors import ConfigError
from dlzoo.go.game import load_game
from dlzoo.go.players import NetEvaluator, SearchPlayer

PASS = "pass"
COLUMNS = "ABCDEFGHJKLMNOPQRST"   # Go skips the letter I
COLOUR_NAMES = ("Black", "White")  # OpenSpiel's players 0 and 1


class GoSession:
    """One game between a person and the Zero network with search; `play` takes the person's move and makes Zero's."""

    def __init__(self, net, cfg, human_colour: str = "black", seed: int = 0, simulations: int | None = None):
        colour = str(human_colour).strip().lower()
        if colour not in ("black", "white", "b", "w"):
            raise ValueError(f"human_colour must be 'black' or 'white', got {human_colour!r}")
        self.human = 0 if colour.startswith("b") else 1
        self.zero = 1 - self.human
        self.n = int(cfg.game.board_size)
        self.komi = float(cfg.game.komi)
        trained = getattr(net, "board_size", self.n)
        if int(trained) != self.n:
            raise ConfigError(f"the network was trained on a {trained}x{trained} board, this recipe plays "
                              f"{self.n}x{self.n}: load the recipe of its board")
        self.game = load_game(self.n, self.komi, cfg.game.get("supported_sizes", (self.n,)))
        self.num_actions = self.n * self.n + 1
        self.seed = int(seed)
        self.simulations = int(simulations if simulations is not None else cfg.evaluator.simulations)
        self.c_puct = float(cfg.evaluator.get("c_puct", 1.5))
        self.evaluator = NetEvaluator(net, self.n)
        self.player = SearchPlayer(self.evaluator, self.simulations, self.c_puct)   # evaluation's player: argmax
        self.new_game()

    # ---- the game
    def new_game(self):
        """A fresh board; when the person plays White, Zero opens, and its opening is returned (else None)."""
        self.state = self.game.new_initial_state()
        self.actions: list[int] = []
        return self._zero_move() if self.state.current_player() == self.zero else None

    def play(self, move):
        """The person's move (a point (row, col), "C3" or "pass"), then Zero's reply, returned (None: the game is over).
        An illegal move raises ValueError with one line and changes nothing."""
        if self.state.is_terminal():
            raise ValueError("the game is over: start a new game")
        if self.state.current_player() != self.human:
            raise ValueError(f"it is {COLOUR_NAMES[self.zero]}'s (Zero's) turn")
        action = self.action(move)
        if action not in self.state.legal_actions():
            name = self.point_name(action)
            if self._stones()[action // self.n, action % self.n] != 0:
                raise ValueError(f"{name} is occupied")
            raise ValueError(f"{name} is illegal here (suicide or ko)")
        self._apply(action)
        return None if self.state.is_terminal() else self._zero_move()

    def rng_for(self, state) -> np.random.Generator:
        """The tie-break generator of Zero's search in a position: from the seed and the move number only, so a
        position gets the same reply whatever came before (replays and tests reproduce it)."""
        return np.random.default_rng((self.seed, int(state.move_number())))

    def zero_choice(self, state) -> int:
        """The action Zero's search picks in `state` (the evaluation player's choice, temperature 0)."""
        return int(self.player.choose([state], self.rng_for(state))[0])

    def _zero_move(self):
        action = self.zero_choice(self.state)
        self._apply(action)
        return self.move_of(action)

    def _apply(self, action: int) -> None:
        self.state.apply_action(action)
        self.actions.append(action)

    # ---- moves and points
    def action(self, move) -> int:
        """OpenSpiel's action of a move: (row, col), a point name such as "C3", or "pass"; ValueError off the board."""
        if isinstance(move, str):
            text = move.strip().upper()
            if text == "PASS":
                return self.n * self.n
            if len(text) < 2 or text[0] not in COLUMNS[: self.n] or not text[1:].isdigit():
                raise ValueError(f"{move!r} is not a move: give (row, col), a point such as 'C3', or 'pass'")
            row, col = int(text[1:]) - 1, COLUMNS.index(text[0])
        else:
            try:
                row, col = (int(v) for v in move)
            except (TypeError, ValueError):
                raise ValueError(f"{move!r} is not a move: give (row, col), a point such as 'C3', or 'pass'") from None
        if not (0 <= row < self.n and 0 <= col < self.n):
            raise ValueError(f"({row}, {col}) is off the {self.n}x{self.n} board")
        return row * self.n + col

    def move_of(self, action: int):
        """A move as the session returns it: (row, col), or "pass"."""
        return PASS if action == self.n * self.n else divmod(int(action), self.n)

    def point_name(self, action: int) -> str:
        """'C3' for a point, 'pass' for the pass."""
        if action == self.n * self.n:
            return PASS
        row, col = divmod(int(action), self.n)
        return f"{COLUMNS[col]}{row + 1}"

    @property
    def moves(self) -> list[tuple[str, object]]:
        """The game so far, each move as (colour, (row, col) or "pass"), Black first."""
        return [("BW"[k % 2], self.move_of(a)) for k, a in enumerate(self.actions)]

    @property
    def over(self) -> bool:
        return self.state.is_terminal()

    @property
    def to_play(self) -> str | None:
        """'Black' or 'White', None once the game is over."""
        return None if self.over else COLOUR_NAMES[self.state.current_player()]

    # ---- what the network thinks
    def policy_value(self) -> tuple[np.ndarray, float]:
        """The network alone on the current position: move probabilities over the N*N points + pass (legal moves only,
        summing to 1) and its value for the side to move in [-1, 1]; zeros and 0.0 once the game is over."""
        if self.over:
            return np.zeros(self.num_actions), 0.0
        priors, values = self.evaluator([self.state])   # the search's own priors: softmax over the legal moves
        legal = np.asarray(self.state.legal_actions_mask(), dtype=bool)[: self.num_actions]
        p = np.where(legal, priors[0], 0.0)
        return p / p.sum(), float(values[0])

    # ---- the board
    def _stones(self) -> np.ndarray:
        """(N, N) board: 1 Black, -1 White, 0 empty; [row, col] as the actions."""
        planes = np.asarray(self.state.observation_tensor(0)).reshape(4, self.n, self.n)   # black, white, empty, to-play
        return planes[0].astype(int) - planes[1].astype(int)

    def captures(self) -> tuple[int, int]:
        """Stones captured by (Black, White): the opponent's stones played less those still on the board."""
        stones = self._stones()
        played = [sum(1 for k, a in enumerate(self.actions) if k % 2 == c and a != self.n * self.n) for c in (0, 1)]
        return played[1] - int((stones == -1).sum()), played[0] - int((stones == 1).sum())

    def area_score(self) -> float:
        """Black's area-score margin (stones + empty regions touching only Black, less White's, less komi): the count
        OpenSpiel's Tromp-Taylor scoring decides a finished game by, for showing the margin."""
        stones, n = self._stones(), self.n
        score, seen = float(stones.sum()), np.zeros((n, n), dtype=bool)
        for r0, c0 in zip(*np.nonzero(stones == 0)):
            if seen[r0, c0]:
                continue
            region, borders, stack = 0, set(), [(r0, c0)]
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                region += 1
                for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                    if 0 <= rr < n and 0 <= cc < n:
                        if stones[rr, cc] == 0 and not seen[rr, cc]:
                            seen[rr, cc] = True
                            stack.append((rr, cc))
                        elif stones[rr, cc] != 0:
                            borders.add(int(stones[rr, cc]))
            if len(borders) == 1:
                score += region * borders.pop()
        return score - self.komi

    def result(self) -> str | None:
        """'Black wins by 3.5', 'White wins', 'draw', from OpenSpiel's returns; None while the game goes on."""
        if not self.over:
            return None
        black = self.state.returns()[0]
        if black == 0:
            return "draw"   # OpenSpiel ends a game that repeats a whole-board position as a draw
        winner = COLOUR_NAMES[0 if black > 0 else 1]
        margin = self.area_score()
        return f"{winner} wins by {abs(margin):g}" if (margin > 0) == (black > 0) else f"{winner} wins"

    def status(self) -> str:
        """One line for the UI: whose turn and the captures, or the result once the game is over."""
        black_caps, white_caps = self.captures()
        caps = f"captures: Black {black_caps}, White {white_caps}"
        you = f"you play {COLOUR_NAMES[self.human]}"
        if self.over:
            return f"Game over after {len(self.actions)} moves: {self.result()} ({you}; {caps})"
        last = ""
        if self.actions:
            name = self.point_name(self.actions[-1])
            last = f"{COLOUR_NAMES[(len(self.actions) - 1) % 2]} {'passed' if name == PASS else 'played ' + name}; "
        who = "your move" if self.state.current_player() == self.human else "Zero's move"
        return f"{last}{self.to_play} to play ({who}; {you}; {caps})"

    def move_list(self) -> str:
        """'1. B C3  2. W pass ...': the game so far as text."""
        return "  ".join(f"{k + 1}. {'BW'[k % 2]} {self.point_name(a)}" for k, a in enumerate(self.actions))

    def sgf(self) -> str:
        """The game so far as SGF (sgfmill, as the evaluator's sample games), the result once it is over."""
        from sgfmill import sgf

        record = sgf.Sgf_game(size=self.n)
        root = record.get_root()
        root.set("KM", self.komi)
        root.set("PB", "human" if self.human == 0 else "alphago-zero")
        root.set("PW", "human" if self.human == 1 else "alphago-zero")
        if self.over:
            black = self.state.returns()[0]
            root.set("RE", "B+" if black > 0 else "W+" if black < 0 else "0")
        for k, a in enumerate(self.actions):
            record.extend_main_sequence().set_move("bw"[k % 2], None if a == self.n * self.n else divmod(a, self.n))
        return record.serialise().decode()

    # ---- the picture and clicks on it
    def _geometry(self, size_px: int) -> tuple[float, float]:
        """(cell, margin) in pixels: the grid's points lie `margin + k * cell` from the image's left and bottom."""
        cell = size_px / (self.n + 1)
        return cell, cell

    def point_xy(self, row: int, col: int, size_px: int = 400) -> tuple[float, float]:
        """The pixel (x, y) of a point's centre on `board_image(size_px)` (y down, row 0 at the bottom)."""
        cell, margin = self._geometry(size_px)
        return margin + col * cell, size_px - margin - row * cell

    def point_at(self, x_px: float, y_px: float, size_px: int = 400) -> tuple[int, int] | None:
        """The board point (row, col) under a click at pixel (x, y) of `board_image(size_px)`, None off the grid."""
        cell, margin = self._geometry(size_px)
        col = int(np.floor((x_px - margin) / cell + 0.5))
        row = int(np.floor((size_px - margin - y_px) / cell + 0.5))
        return (row, col) if 0 <= row < self.n and 0 <= col < self.n else None

    def board_image(self, size_px: int = 400) -> np.ndarray:
        """(size_px, size_px, 3) uint8 RGB: the board, its stones, the last move ringed, the network's move
        probabilities as a red heat map (with percentages) on the empty legal points, and its pass and value above."""
        from PIL import Image, ImageDraw, ImageFont

        size_px = int(size_px)
        n, (cell, margin) = self.n, self._geometry(size_px)
        image = Image.new("RGB", (size_px, size_px), (220, 179, 92))
        draw = ImageDraw.Draw(image, "RGBA")
        font = ImageFont.load_default(size=max(8, int(cell / 5)))
        stones = self._stones()
        probs, value = self.policy_value()
        top = probs[: n * n].max()
        for row, col in zip(*np.nonzero(stones == 0)):   # the heat map first: the grid stays visible over it
            p = probs[row * n + col]
            if top > 0 and p > 0:
                x, y = self.point_xy(row, col, size_px)
                draw.rectangle([x - cell / 2, y - cell / 2, x + cell / 2, y + cell / 2],
                               fill=(220, 30, 30, int(20 + 140 * p / top)))
        far = margin + (n - 1) * cell
        line = max(1, size_px // 300)
        for k in range(n):
            draw.line([(margin + k * cell, margin), (margin + k * cell, far)], fill="black", width=line)
            draw.line([(margin, margin + k * cell), (far, margin + k * cell)], fill="black", width=line)
            x, _ = self.point_xy(0, k, size_px)
            _, y = self.point_xy(k, 0, size_px)
            draw.text((x, size_px - margin / 2), COLUMNS[k], fill="black", font=font, anchor="mm")
            draw.text((margin / 2, y), str(k + 1), fill="black", font=font, anchor="mm")
        radius = 0.45 * cell
        for row in range(n):
            for col in range(n):
                x, y = self.point_xy(row, col, size_px)
                if stones[row, col]:
                    draw.ellipse([x - radius, y - radius, x + radius, y + radius],
                                 fill="black" if stones[row, col] == 1 else "white", outline="black", width=line)
                elif probs[row * n + col] >= 0.005:
                    draw.text((x, y), f"{100 * probs[row * n + col]:.0f}%", fill="black", font=font, anchor="mm",
                              stroke_width=1, stroke_fill=(240, 220, 180))
        if not self.over:   # what the heat map cannot show: the pass, and the network's value of the position
            draw.text((size_px / 2, margin / 2), f"pass {100 * probs[n * n]:.0f}%   value for {self.to_play} {value:+.2f}",
                      fill="black", font=font, anchor="mm")
        if self.actions and self.actions[-1] != n * n:
            row, col = divmod(self.actions[-1], n)
            x, y = self.point_xy(row, col, size_px)
            r = 0.22 * cell
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(230, 40, 40), width=max(2, 2 * line))
        return np.asarray(image, dtype=np.uint8)
