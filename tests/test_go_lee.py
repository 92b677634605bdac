"""AlphaGo (Lee) on 5x5 Go (dlzoo/go/lee.py): the search's leaf value is the lambda-mix of the value network and a
rollout of the rollout policy, the rollout policy plays only legal moves to the game's end, a smoke train -> evaluate
runs through the pipeline's own entry points (Lee against a stand-in alphago-zero checkpoint; on 5x5, and on the full
profile's 9x9 board at a budget of seconds), and bad input (a board
size the recipe does not support, a lambda outside [0, 1], an alphago-zero checkpoint of another board) stops with a
one-line error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import compose_config, mlflow_runs, replay_sgf, run_entry, run_full_profile_9x9
from dlzoo.checkpoints import CHECKPOINT_KEY, stamp
from dlzoo.go.game import load_game
from dlzoo.go.lee import LeeEvaluator, LeeNets, SensibleEvaluator, mixed_value, own_eyes, rollout_values
from dlzoo.go.net import ZeroNet

N = 5
PASS = N * N
WIN_LINE = [2, 1, 6, 11, 8, 5, 10, 20, 12, 23, 16, 4, 24]   # tests/test_go.py: White's 14th and last move 19 wins


def _last_move_position():
    state = load_game(N, 0.5, max_game_length=14).new_initial_state()
    for action in WIN_LINE:
        state.apply_action(action)
    return state


def _nets(value: float, rollout_move: int) -> LeeNets:
    """Tiny nets whose value network says `value` everywhere and whose rollout policy all but always plays `rollout_move`."""
    nets = LeeNets(N, channels=8, blocks=1, value_hidden=8)
    with torch.no_grad():
        final = nets.value.value_fc[2]
        final.weight.zero_()
        final.bias.fill_(math.atanh(value))
        nets.rollout.linear.weight.zero_()
        nets.rollout.linear.bias.zero_()
        nets.rollout.linear.bias[rollout_move] = 50.0
    return nets.eval()


def test_mixed_value_is_the_papers_formula():
    assert np.allclose(mixed_value([0.2, -0.6], [1.0, -1.0], 0.5), [0.6, -0.8])
    assert np.allclose(mixed_value([0.2], [-1.0], 0.0), [0.2]) and np.allclose(mixed_value([0.2], [-1.0], 1.0), [-1.0])


@pytest.mark.parametrize("rollout_move, z", [(19, 1.0), (PASS, -1.0)])
def test_leaf_value_mixes_value_net_and_rollout(rollout_move, z):
    """White to play the last move: move 19 wins (z = +1 for White), passing loses (z = -1). The value network says
    -0.5, so with lambda = 0.25 the leaf is 0.75 * (-0.5) + 0.25 * z."""
    state = _last_move_position()
    assert state.current_player() == 1
    evaluator = LeeEvaluator(_nets(-0.5, rollout_move), N, 0.25, np.random.default_rng(0))
    priors, values = evaluator([state, state])
    assert np.allclose(values, 0.75 * -0.5 + 0.25 * z)
    legal = np.asarray(state.legal_actions_mask(), dtype=bool)[: PASS + 1]
    assert np.isclose(priors[0].sum(), 1.0) and np.all(priors[0][~legal] < 1e-6)   # the SL policy's priors, legal only


def test_rollout_policy_plays_legal_moves_to_the_end():
    """A rollout policy that wants the centre point above all still plays only legal moves, and every game ends."""
    game = load_game(N, 0.5)
    nets = _nets(0.0, 12)
    states = [game.new_initial_state() for _ in range(30)]
    states[1].apply_action(12)                       # the centre already taken in one game
    trace: list = []
    z = rollout_values(states, N, np.random.default_rng(0), nets.rollout, trace=trace)
    assert len(trace) == 30
    for start, moves, value in zip(states, trace, z):
        state, me = start.clone(), start.current_player()
        for action in moves:
            assert action in state.legal_actions()
            state.apply_action(action)
        assert state.is_terminal() and state.returns()[me] == value
    assert trace[0][0] == 12 and trace[1][0] != 12
    assert set(np.unique(z)) <= {-1.0, 0.0, 1.0}


SMOKE = ["experiment=go-5x5-alphago-lee", "profile=smoke", "tracking.log_model=false"]


def _stand_in_zero(path, board_size: int = N):
    """An alphago-zero checkpoint (untrained, stamped) where the Lee evaluator looks for one."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": ZeroNet(board_size, channels=8, blocks=1, value_hidden=16).state_dict(),
                CHECKPOINT_KEY: stamp("go-5x5", "alphago-zero", "go-5x5-alphago-zero")}, path / "best.ckpt")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("lee")
    _stand_in_zero(cwd / "artifacts/models/go-5x5-alphago-zero")
    train = run_entry("train", *SMOKE, cwd=cwd, timeout=300)
    evaluate = run_entry("evaluate", *SMOKE, cwd=cwd, timeout=300)
    return cwd, train, evaluate


def test_smoke_train_evaluate(smoke_run):
    cwd, train, evaluate = smoke_run
    assert train.returncode == 0, train.stderr[-2000:]
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    model_dir = cwd / "artifacts/models/go-5x5-alphago-lee"
    summary = json.loads((model_dir / "train_summary.json").read_text())
    assert summary["expert_positions"] > 0 and summary["value_positions"] > 0 and summary["rl_pool_size"] == 3
    checkpoint = torch.load(model_dir / "best.ckpt", weights_only=True)
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"sl", "rl", "value", "rollout"}
    curve = (cwd / "plots/go-5x5/alphago-lee/learning_curve.csv").read_text().splitlines()
    header = curve[0].split(",")
    assert len(curve) == 1 + 7 and set(header) >= {"phase", "train/sl_loss", "train/rollout_loss",
                                                   "train/rl_win_rate_vs_pool", "train/value_loss",
                                                   "val/search_win_rate_vs_random"}
    metrics = json.loads((cwd / "metrics/go-5x5/alphago-lee.json").read_text())
    for name in ("vs_random", "vs_random_net", "vs_random_sl_net", "vs_mcts", "vs_zero"):
        for colour in ("", "_as_black", "_as_white"):
            key = f"test/win_rate_{name}{colour}"
            assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
        assert metrics[f"test/games_{name}"] == 4
    assert metrics["test/lambda"] == 0.5 and "accept/win_rate_vs_random" in metrics
    from sgfmill import sgf

    record = sgf.Sgf_game.from_bytes((cwd / "artifacts/reports/go-5x5-alphago-lee/vs_zero_game0.sgf").read_bytes())
    names = {record.get_root().get("PB"), record.get_root().get("PW")}
    assert names == {"alphago-lee", "alphago-zero"} and len(record.get_main_sequence()) > 1
    assert (cwd / "artifacts/reports/go-5x5-alphago-lee/vs_mcts_game0.png").is_file()
    runs = mlflow_runs(cwd / "mlflow.db")
    assert {(r["experiment"], r["name"], r["status"]) for r in runs} == {("go-5x5", "alphago-lee", "FINISHED")}


# profile=full (conf/scale/full/go-5x5-alphago-lee.yaml: the 9x9 board, 64 channels, 6 blocks) with only its budgets cut
# to seconds, the towers narrowed too (every shape is read from the config); trainer=cpu as in tests/test_go.py's
# full-profile test (the full profile's trainer=gpu is refused without CUDA; the Go runners compute on the CPU).
FULL_9X9_BUDGET = ["runner.expert_games=2", "runner.expert_simulations=2", "runner.sl_steps=2", "runner.rollout_steps=2",
                   "runner.batch_size=32", "runner.rl_iterations=2", "runner.rl_games=2", "runner.pool_every=1",
                   "runner.value_games=8", "runner.value_steps=2", "runner.simulations=2", "runner.val_games=2",
                   "runner.search_val_games=2", "evaluator.games=2", "evaluator.simulations=2", "evaluator.sgf_games=1",
                   "model.channels=16", "model.blocks=2"]


def test_full_profile_plays_9x9_through_train_and_evaluate(tmp_path):
    """The full profile's 9x9 recipe (no GPU run was ever made of it) at a budget of seconds: the train and evaluate
    stages as DVC runs them (Lee against a stand-in 9x9 alphago-zero checkpoint), the checkpoint's four models for a
    9x9 board, every pairing's rates in range, 9x9 SGF games that replay."""
    _stand_in_zero(tmp_path / "artifacts/models/go-5x5-alphago-zero", board_size=9)
    summary, checkpoint = run_full_profile_9x9("go-5x5-alphago-lee", FULL_9X9_BUDGET, tmp_path)
    assert summary["board_size"] == 9 and summary["expert_positions"] > 0 and summary["value_positions"] > 0
    assert summary["rl_pool_size"] == 3
    state = checkpoint["state_dict"]
    assert checkpoint["board_size"] == 9 and checkpoint["lam"] == 0.5
    assert all(int(state[f"{m}.trained_board_size"]) == 9 and state[f"{m}.stem.0.weight"].shape == (16, 4, 3, 3)
               for m in ("sl", "rl", "value"))
    assert state["rollout.linear.weight"].shape == (9 * 9 + 1, 2 * 9 * 9 + 1)   # the rollout policy's 9x9 features
    nets = LeeNets(9, channels=16, blocks=2)
    nets.load_state_dict(state)
    logits, value = nets(torch.zeros(1, 4, 9, 9))
    assert nets.board_size == 9 and logits.shape == (1, 9 * 9 + 1) and value.shape == (1,)
    curve = (tmp_path / "plots/go-5x5/alphago-lee/learning_curve.csv").read_text().splitlines()
    assert len(curve) == 1 + 7
    metrics = json.loads((tmp_path / "metrics/go-5x5/alphago-lee.json").read_text())
    for name in ("vs_random", "vs_random_net", "vs_random_sl_net", "vs_mcts", "vs_zero"):
        for colour in ("", "_as_black", "_as_white"):
            key = f"test/win_rate_{name}{colour}"
            assert 0 <= metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"] <= 1
        assert metrics[f"test/games_{name}"] == 2 and 0 <= metrics[f"test/draw_rate_{name}"] <= 1
    assert metrics["test/lambda"] == 0.5 and metrics["test/simulations"] == 2 and metrics["test/leaf_evals_per_s"] > 0
    assert {metrics[f"accept/{k}"] for k in ("win_rate_vs_random", "win_rate_vs_random_net", "win_rate_vs_mcts")} <= {0.0, 1.0}
    reports = tmp_path / "artifacts/reports/go-5x5-alphago-lee"
    assert replay_sgf(reports / "vs_zero_game0.sgf", 9) > 1 and replay_sgf(reports / "vs_mcts_game0.sgf", 9) > 1
    assert (reports / "vs_mcts_game0.png").is_file() and (reports / "vs_zero_game0.png").is_file()
    runs = mlflow_runs(tmp_path / "mlflow.db")
    assert {(r["name"], r["tags"].get("stage"), r["status"]) for r in runs} == {
        ("alphago-lee", "train", "FINISHED"), ("alphago-lee", "evaluate", "FINISHED")}
    assert all(r["tags"]["profile"] == "full" and r["params"]["game.board_size"] == "9"
               and r["params"]["model.channels"] == "16" for r in runs)


def _cfg(*overrides):
    return compose_config(*SMOKE, *overrides)


@pytest.mark.parametrize("override, message", [
    ("game.board_size=7", "board size 7 is not supported by this recipe (game.supported_sizes: 5, 9)"),
    ("runner.lam=1.5", "runner.lam (the rollout's weight in the leaf value) must lie in [0, 1], got 1.5"),
])
def test_bad_runner_input_is_one_line_and_leaves_no_run(workdir, override, message):
    from dlzoo.errors import ConfigError
    from dlzoo.training.train import train

    with pytest.raises(ConfigError) as info:
        train(_cfg(override))
    assert str(info.value) == message
    assert not (workdir / "mlflow.db").exists() or mlflow_runs(workdir / "mlflow.db") == []
    assert not (workdir / "artifacts").exists()


def test_zero_checkpoint_of_another_board_is_one_line(workdir, tmp_path):
    """A stand-in Lee checkpoint of the smoke model's shape, and an alphago-zero checkpoint trained on 9x9."""
    from dlzoo.errors import ConfigError
    from dlzoo.evaluation.evaluate import evaluate

    lee = tmp_path / "lee.ckpt"
    torch.save({"state_dict": LeeNets(N, channels=8, blocks=1).state_dict(),
                CHECKPOINT_KEY: stamp("go-5x5", "alphago-lee", "go-5x5-alphago-lee")}, lee)
    _stand_in_zero(tmp_path / "zero9", board_size=9)
    with pytest.raises(ConfigError) as info:
        evaluate(_cfg(f"checkpoint_path={lee}", f"evaluator.zero_model_dir={tmp_path / 'zero9'}"))
    assert str(info.value) == (f"the alphago-zero checkpoint in {tmp_path / 'zero9'} was trained on a 9x9 board, "
                               "this recipe plays 5x5")
    assert not (workdir / "mlflow.db").exists() or mlflow_runs(workdir / "mlflow.db") == []


def test_own_eyes_are_the_movers_single_point_eyes_and_get_no_prior():
    """Black at (0,1) and (1,0) makes (0,0) Black's eye (the board edge counts as Black's); White's two stones at
    (4,3) and (4,4) make none. Only the player to move is barred from its own eye; the pass never is."""
    game = load_game(5, 0.5)
    state = game.new_initial_state()
    for action in (1, 24, 5, 23):  # B (0,1), W (4,4), B (1,0), W (4,3); Black to move
        state.apply_action(action)
    eyes = own_eyes([state], 5)[0]
    assert eyes.nonzero()[0].tolist() == [0] and not eyes[25]
    white_to_move = state.clone()
    white_to_move.apply_action(12)  # B (2,2): now White to move, and (0,0) is not White's eye
    assert not own_eyes([white_to_move], 5)[0].any()
    priors, _ = SensibleEvaluator(ZeroNet(5, 8, 1, 8), 5)([state])
    assert priors[0, 0] == 0 and priors[0].sum() == pytest.approx(1.0) and priors[0, 25] > 0
