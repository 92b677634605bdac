"""The demo's Go session (dlzoo/demo/go_play.py) on the smoke recipe's network, randomly initialised: OpenSpiel
referees every move, an illegal move changes nothing, Zero's reply is the evaluation player's choice, and the
picture, the clicks on it and the network's probabilities agree with the board."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import compose_config
from dlzoo.config import build
from dlzoo.demo.go_play import GoSession
from dlzoo.errors import ConfigError
from dlzoo.go.net import ZeroNet
from dlzoo.go.players import NetEvaluator, SearchPlayer

N = 5
PASS = N * N


@pytest.fixture(scope="module")
def cfg():
    return compose_config("experiment=go-5x5-alphago-zero", "profile=smoke")


@pytest.fixture(scope="module")
def net(cfg):
    torch.manual_seed(0)
    return build(cfg.model, "model").eval()   # what the runner builds; random weights


def _state_before_last(session):
    """The position the last move was played in, replayed from the rules engine's initial state."""
    state = session.game.new_initial_state()
    for action in session.actions[:-1]:
        state.apply_action(action)
    return state


def _set_position(session, line):
    """Put the session in the position after `line` (OpenSpiel actions), as if those moves had been played."""
    session.state = session.game.new_initial_state()
    session.actions = []
    for action in line:
        session._apply(action)


def test_a_legal_move_gets_a_legal_reply(net, cfg):
    session = GoSession(net, cfg)
    assert session.moves == [] and session.to_play == "Black"
    reply = session.play((2, 2))
    assert session.moves[0] == ("B", (2, 2)) and len(session.moves) == 2
    assert session.moves[1] == ("W", reply)
    action = PASS if reply == "pass" else reply[0] * N + reply[1]
    assert action in _state_before_last(session).legal_actions()   # legal after the human's move, per OpenSpiel
    assert session.to_play == "Black" and "Black to play" in session.status()


def test_illegal_moves_raise_one_line_and_change_nothing(net, cfg):
    session = GoSession(net, cfg)
    reply = session.play("C3")   # a point name is a move too
    assert session.moves[0] == ("B", (2, 2))
    before, state_before = list(session.moves), str(session.state)
    occupied = (2, 2)
    for bad in (occupied, reply if reply != "pass" else occupied, (5, 0), (-1, 2), (0, 9), "Z9", "hello", 3):
        with pytest.raises(ValueError) as err:
            session.play(bad)
        assert "\n" not in str(err.value)
        assert session.moves == before and str(session.state) == state_before
    with pytest.raises(ValueError, match="occupied"):
        session.play((2, 2))
    with pytest.raises(ValueError, match="off the 5x5 board"):
        session.play((5, 0))
    # suicide: Black into the corner White closes, White's stones keeping liberties elsewhere
    _set_position(session, [24, 1, 23, 5])
    with pytest.raises(ValueError, match="suicide or ko"):
        session.play((0, 0))
    assert len(session.moves) == 4


def test_pass_and_the_end_of_a_game(net, cfg):
    session = GoSession(net, cfg)
    session.play("pass")
    assert session.moves[0] == ("B", "pass")
    # two passes end a game: area scoring, empty board, komi 0.5
    _set_position(session, [PASS, PASS])
    assert session.over and session.to_play is None
    assert session.result() == "White wins by 0.5" and "White wins by 0.5" in session.status()
    with pytest.raises(ValueError, match="over"):
        session.play((1, 1))
    assert len(session.moves) == 2
    assert session.policy_value()[0].sum() == 0


def test_a_game_played_to_its_end_reports_the_rules_engines_result(net, cfg):
    session = GoSession(net, cfg, seed=3)
    rng = np.random.default_rng(0)
    reply = "start"
    while not session.over:
        assert reply is not None
        legal = session.state.legal_actions()
        # the human prefers points to passing, so the game runs until the board fills or the length limit
        points = [a for a in legal if a != PASS]
        reply = session.play(session.move_of(int(rng.choice(points))) if points else "pass")
    black = session.state.returns()[0]
    result = session.result()
    if black == 0:
        assert result == "draw"
    else:
        assert re.fullmatch(r"(Black|White) wins( by \d+(\.\d+)?)?", result)
        assert result.startswith("Black" if black > 0 else "White")
    assert result in session.status() and session.status().startswith("Game over")
    from sgfmill import sgf

    record = sgf.Sgf_game.from_string(session.sgf())
    replayed = [node.get_move() for node in record.get_main_sequence()[1:]]
    assert replayed == [(c.lower(), None if m == "pass" else m) for c, m in session.moves]
    assert record.get_root().get("RE")[0] == ("B" if black > 0 else "W" if black < 0 else "0")
    assert session.move_list().startswith("1. B ")


def test_zero_opens_when_the_human_plays_white(net, cfg):
    session = GoSession(net, cfg, human_colour="white")
    assert len(session.moves) == 1 and session.moves[0][0] == "B" and session.to_play == "White"
    opening = session.new_game()
    assert opening is not None and session.moves == [("B", opening)]
    with pytest.raises(ValueError):
        GoSession(net, cfg, human_colour="red")


@pytest.mark.parametrize("simulations", [None, 24])
def test_zeros_reply_is_the_evaluation_players_choice(net, cfg, simulations):
    """The evaluator's search player (dlzoo.go.evaluate), same network, simulations and tie-break generator."""
    sims = cfg.evaluator.simulations if simulations is None else simulations
    player = SearchPlayer(NetEvaluator(net, N), sims, cfg.evaluator.c_puct)
    for seed in (0, 1):
        session = GoSession(net, cfg, seed=seed, simulations=simulations)
        for move in [(2, 2), (1, 3), (3, 1)]:
            if session.over or session.action(move) not in session.state.legal_actions():
                break
            reply = session.play(move)
            if reply is None:
                break
            state = _state_before_last(session)
            expected = player.choose([state], np.random.default_rng((seed, state.move_number())))[0]
            assert session.actions[-1] == expected


def test_policy_value_is_a_distribution_over_the_legal_moves(net, cfg):
    session = GoSession(net, cfg)
    session.play((2, 2))
    session.play((0, 0))
    probs, value = session.policy_value()
    legal = np.asarray(session.state.legal_actions_mask(), dtype=bool)[: PASS + 1]
    assert probs.shape == (PASS + 1,) and abs(probs.sum() - 1) < 1e-9
    assert np.all(probs[~legal] == 0) and np.all(probs[legal] > 0) and (~legal).sum() >= 2
    assert -1.0 <= value <= 1.0


def test_clicks_map_to_points_and_the_image_has_its_size(net, cfg):
    session = GoSession(net, cfg)
    session.play((1, 3))
    for size in (400, 257):
        for row in range(N):
            for col in range(N):
                x, y = session.point_xy(row, col, size)
                assert session.point_at(x, y, size) == (row, col)
                assert session.point_at(x + 0.3 * size / (N + 1), y - 0.3 * size / (N + 1), size) == (row, col)
        assert session.point_at(2, 2, size) is None and session.point_at(size - 2, size - 2, size) is None
        image = session.board_image(size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
    # row 0 is drawn at the bottom: a black stone at D2 (row 1) is dark in the image there
    x, y = session.point_xy(1, 3, 400)
    assert session.board_image(400)[int(y), int(x)].max() < 60


def test_a_network_of_another_board_is_refused(cfg):
    with pytest.raises(ConfigError, match="9x9"):
        GoSession(ZeroNet(9, channels=4, blocks=1, value_hidden=8), cfg)
