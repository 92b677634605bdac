"""AlphaGo Zero on 5x5 Go (dlzoo/go/): the search finds a one-move win and the one move that saves a lost
game, the symmetry augmentation keeps each policy target on its board, a smoke self-play -> train -> arena
loop runs through the pipeline's own train and evaluate entry points (on 5x5, and on the full profile's 9x9 board at a
budget of seconds), and bad input (a board size the recipe
does not support, a checkpoint of another board) stops with a one-line error and leaves no MLflow run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import compose_config, mlflow_runs, replay_sgf, run_entry, run_full_profile_9x9
from dlzoo.checkpoints import CHECKPOINT_KEY, stamp
from dlzoo.config import build
from dlzoo.go.evaluate import elo_fit, wilson
from dlzoo.go.game import augment, encode, load_game, transform_board, transform_policy
from dlzoo.errors import ConfigError
from dlzoo.go.mcts import most_visited, search, uniform_evaluator
from dlzoo.go.net import ZeroNet, go_device
from dlzoo.go.parallel import split_sizes
from dlzoo.go.players import NetEvaluator, NetPlayer, Pairing, RandomPlayer, SearchPlayer, play_matches
from dlzoo.go.selfplay import self_play_parts

N = 5
PASS = N * N
# Positions found by random play and pinned by brute force below. max_game_length ends (and scores) the game,
# so a move's worth is exact: the last move of a 14-move game, and the last-but-one.
WIN_LINE = [2, 1, 6, 11, 8, 5, 10, 20, 12, 23, 16, 4, 24]     # White to play the 14th and last move
SAVE_LINE = [10, 0, 18, 13, 22, 11, 7, 2, 12, 17, 20, 21]     # Black to play the 13th; White then the last


def _position(line, length=14):
    game = load_game(N, 0.5, max_game_length=length)
    state = game.new_initial_state()
    for action in line:
        state.apply_action(action)
    return state


def _after(state, action):
    child = state.clone()
    child.apply_action(action)
    return child


def _winning_moves(state):
    me = state.current_player()
    return {a for a in state.legal_actions() if _after(state, a).returns()[me] > 0}


def _saving_moves(state):
    """Moves after which the opponent has no winning last move."""
    return {a for a in state.legal_actions() if not _winning_moves(_after(state, a))}


def test_mcts_plays_the_one_winning_move():
    state = _position(WIN_LINE)
    assert _winning_moves(state) == {19} and len(state.legal_actions()) == 11   # one winner among 11 legal moves
    visits = search([state], uniform_evaluator(PASS + 1), 200)[0]
    assert int(np.argmax(visits)) == 19


def test_mcts_plays_the_one_saving_move():
    state = _position(SAVE_LINE)
    assert _saving_moves(state) == {16}
    assert _winning_moves(_after(state, PASS))   # the threat is real: passing loses
    visits = search([state], uniform_evaluator(PASS + 1), 2000)[0]
    assert int(np.argmax(visits)) == 16


def test_lock_step_search_keeps_games_apart():
    """Two positions searched in one batch give each its own answer."""
    win, save = _position(WIN_LINE), _position(SAVE_LINE)
    visits = search([win, save], uniform_evaluator(PASS + 1), 2000)
    assert [int(np.argmax(v)) for v in visits] == [19, 16]


def test_a_tie_in_visits_goes_to_any_of_the_tied_moves():
    """Not to the lowest index (np.argmax): with fewer simulations than moves most moves tie at one visit."""
    rng = np.random.default_rng(0)
    assert {most_visited(np.array([0, 3, 1, 3, 3, 0]), rng) for _ in range(200)} == {1, 3, 4}
    assert most_visited(np.array([1, 5, 2]), rng) == 1


def test_games_in_forked_processes_equal_the_games_played_in_order():
    """Pairings and self-play split over processes (dlzoo.go.parallel) give the games they give in one process,
    and the leaf evaluators' counters come back to the parent."""
    game = load_game(N, 0.5)
    results = {}
    for workers in (1, 2):
        torch.manual_seed(0)
        net = NetEvaluator(ZeroNet(N, channels=4, blocks=1, value_hidden=8), N)
        pairings = [Pairing("search", SearchPlayer(net, 4, sample_moves=2), RandomPlayer(), 6, (7, 0)),
                    Pairing("net", NetPlayer(net), RandomPlayer(), 4, (7, 1)),
                    Pairing("random", RandomPlayer(), RandomPlayer(), 4, (7, 2))]
        played = play_matches(game, pairings, workers)
        data, stats = self_play_parts(game, lambda: NetEvaluator(net.net, N), N, 5, 4, [11, 12], workers)
        results[workers] = ({k: [(g.a_black, g.moves, g.returns) for g in v[0]] for k, v in played.items()},
                            {k: v.tobytes() for k, v in data.items()}, net.evaluations, stats["evaluations"])
    assert results[1] == results[2]
    games, _, evaluations, selfplay_evaluations = results[2]
    assert [len(games[k]) for k in ("search", "net", "random")] == [6, 4, 4]
    assert evaluations > 0 and selfplay_evaluations > 0


def test_games_split_into_near_equal_parts_of_whole_colour_pairs():
    assert split_sizes(40, 2, multiple=2) == [20, 20]
    assert split_sizes(42, 4, multiple=2) == [12, 10, 10, 10]
    assert split_sizes(41, 2, multiple=2) == [20, 20, 1]   # the odd game as a part of its own (its own seed)
    assert split_sizes(1, 2, multiple=2) == [1] and split_sizes(0, 2) == []
    assert split_sizes(5, 2) == [3, 2] and split_sizes(3, 8) == [1, 1, 1]


def test_the_zero_network_computes_where_the_trainer_says(monkeypatch):
    assert go_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert go_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but no CUDA GPU"):
        go_device("gpu")


def test_symmetries_keep_policy_targets_on_their_boards():
    rng = np.random.default_rng(0)
    state = _position(SAVE_LINE)
    planes = encode(state, N)[None]
    pi = rng.random((1, PASS + 1)).astype(np.float32)
    boards, targets = augment(planes, pi, N)
    assert boards.shape == (8, 4, N, N) and targets.shape == (8, PASS + 1)
    assert len({b.tobytes() for b in boards}) == 8   # this position has no symmetry of its own: 8 different boards
    for k in range(8):
        # the probability on a point travels with the stone that sits there: own stones carry the same mass
        own = boards[k, 0].reshape(-1) > 0
        assert np.isclose(targets[k, :PASS][own].sum(), pi[0, :PASS][planes[0, 0].reshape(-1) > 0].sum())
        # each point's target is where the board transform moved that point
        for point in range(PASS):
            marker = np.zeros((N, N))
            marker.flat[point] = 1
            moved = int(np.argmax(transform_board(marker, k)))
            assert targets[k, moved] == pi[0, point]
        assert targets[k, PASS] == pi[0, PASS]   # the pass never moves
    # a symmetric image of a legal move is legal in the symmetric image of the position
    legal = np.asarray(state.legal_actions_mask(), dtype=np.float32)[: PASS + 1]
    empty = planes[0, 0] + planes[0, 1] == 0
    for k in range(8):
        assert np.array_equal(transform_policy(legal[None], k, N)[0, :PASS].reshape(N, N) > 0,
                              transform_board(empty, k) & (transform_policy(legal[None], k, N)[0, :PASS].reshape(N, N) > 0))


def test_wilson_interval_and_elo_fit():
    low, high = wilson(100, 200)
    assert low < 0.5 < high and np.isclose(high - 0.5, 0.5 - low)
    assert wilson(200, 200)[1] == 1.0 and wilson(200, 200)[0] > 0.98
    ratings = elo_fit([0, 1, 2], {(0, 1): (2, 20), (0, 2): (1, 20), (1, 2): (5, 20)})
    assert ratings[0] == 0 and 0 < ratings[1] < ratings[2]


def test_net_fits_any_board_and_remembers_its_own():
    net = ZeroNet(5, channels=8, blocks=1)
    logits, value = net(torch.zeros(3, 4, 9, 9))
    assert logits.shape == (3, 82) and value.shape == (3,) and net.board_size == 5


SMOKE = ["experiment=go-5x5-alphago-zero", "profile=smoke", "tracking.log_model=false"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke self-play -> train -> arena loop and its evaluation, through the pipeline's entry points."""
    cwd = tmp_path_factory.mktemp("go")
    train = run_entry("train", *SMOKE, cwd=cwd, timeout=300)
    evaluate = run_entry("evaluate", *SMOKE, cwd=cwd, timeout=300)
    return cwd, train, evaluate


def test_smoke_self_play_train_arena_loop(smoke_run):
    cwd, train, evaluate = smoke_run
    assert train.returncode == 0, train.stderr[-2000:]
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    model_dir = cwd / "artifacts/models/go-5x5-alphago-zero"
    summary = json.loads((model_dir / "train_summary.json").read_text())
    assert summary["generations"] == 2 and summary["selfplay_positions"] > 0 and summary["net_evals_per_s"] > 0
    assert sorted(p.name for p in (model_dir / "generations").glob("*.pt")) == ["gen_000.pt", "gen_001.pt", "gen_002.pt"]
    checkpoint = torch.load(model_dir / "best.ckpt", weights_only=True)
    assert checkpoint["generation"] == summary["best_generation"] and checkpoint["board_size"] == 5
    curve = (cwd / "plots/go-5x5/alphago-zero/learning_curve.csv").read_text().splitlines()
    assert len(curve) == 3 and "val/arena_win_rate" in curve[0]
    # the best network's rate against random is the accepted learner's, and is carried while no learner is accepted
    rows = list(csv.DictReader(curve))
    for before, row in zip([None] + rows, rows):
        if float(row["val/accepted"]):
            assert row["val/net_win_rate_vs_random"] == row["val/learner_win_rate_vs_random"]
        elif before is not None:
            assert row["val/net_win_rate_vs_random"] == before["val/net_win_rate_vs_random"]
    metrics = json.loads((cwd / "metrics/go-5x5/alphago-zero.json").read_text())
    for name in ("vs_random", "vs_random_net", "vs_mcts", "last_vs_first"):
        for colour in ("", "_as_black", "_as_white"):
            key = f"test/win_rate_{name}{colour}"
            assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
        assert metrics[f"test/games_{name}"] == 4
    assert "test/elo_last" in metrics and "accept/win_rate_vs_mcts" in metrics
    reports = cwd / "artifacts/reports/go-5x5-alphago-zero"
    assert (reports / "elo.png").is_file() and (reports / "vs_mcts_game0.png").is_file()
    from sgfmill import sgf

    record = sgf.Sgf_game.from_bytes((reports / "vs_mcts_game0.sgf").read_bytes())
    assert record.get_size() == 5 and len(record.get_main_sequence()) > 1
    runs = mlflow_runs(cwd / "mlflow.db")
    assert {(r["experiment"], r["name"], r["status"]) for r in runs} == {("go-5x5", "alphago-zero", "FINISHED")}


# profile=full (conf/scale/full/go-5x5-alphago-zero.yaml: the 9x9 board, 64 channels, 6 blocks) with only its budgets cut
# to seconds, the tower narrowed too (64 x 6 made this test 37 s, 16 x 2 makes it 20 s on two cores; every shape is read
# from the config, so the 9x9 path is the same). trainer=cpu: the full profile picks trainer=gpu, which the train
# stage refuses on a machine without CUDA; the Go runner and evaluator compute on the CPU whatever the trainer says
# (scripts/gpu_check.py notes the same).
FULL_9X9_BUDGET = ["runner.generations=2", "runner.games_per_generation=2", "runner.simulations=2",
                   "runner.train_steps=2", "runner.batch_size=32", "runner.arena_games=2", "runner.arena_simulations=2",
                   "runner.val_games=2", "evaluator.games=2", "evaluator.simulations=2", "evaluator.elo_players=2",
                   "evaluator.elo_games=2", "evaluator.elo_simulations=2", "evaluator.sgf_games=1",
                   "model.channels=16", "model.blocks=2"]


def test_full_profile_plays_9x9_through_train_and_evaluate(tmp_path):
    """The full profile's 9x9 recipe (no GPU run was ever made of it) at a budget of seconds: the train and evaluate
    stages as DVC runs them, the checkpoint a 9x9 network, every pairing's rates in range, 9x9 SGF games that replay."""
    full = compose_config("experiment=go-5x5-alphago-zero", "profile=full")
    logits, _ = build(full.model, "model")(torch.zeros(2, 4, 9, 9))   # the full tower itself, on 9x9 planes
    assert logits.shape == (2, 9 * 9 + 1)
    summary, checkpoint = run_full_profile_9x9("go-5x5-alphago-zero", FULL_9X9_BUDGET, tmp_path)
    model_dir = tmp_path / "artifacts/models/go-5x5-alphago-zero"
    assert summary["board_size"] == 9 and summary["generations"] == 2 and summary["stopped_by"] == "generations"
    assert summary["selfplay_positions"] > 0 and summary["net_evals_per_s"] > 0
    state = checkpoint["state_dict"]
    assert checkpoint["board_size"] == 9 and int(state["trained_board_size"]) == 9
    assert checkpoint["generation"] == summary["best_generation"]
    assert state["stem.0.weight"].shape == (16, 4, 3, 3)                        # the configured width ...
    assert len({k.split(".")[1] for k in state if k.startswith("tower.")}) == 2  # ... and depth
    from dlzoo.go.evaluate import load_zero_net

    net = load_zero_net(model_dir / "best.ckpt")
    logits, value = net(torch.from_numpy(encode(load_game(9, 0.5).new_initial_state(), 9))[None])
    assert logits.shape == (1, 9 * 9 + 1) and value.shape == (1,)
    assert sorted(p.name for p in (model_dir / "generations").glob("*.pt")) == ["gen_000.pt", "gen_001.pt", "gen_002.pt"]
    metrics = json.loads((tmp_path / "metrics/go-5x5/alphago-zero.json").read_text())
    for name in ("vs_random", "vs_random_net", "vs_mcts", "last_vs_first"):
        for colour in ("", "_as_black", "_as_white"):
            key = f"test/win_rate_{name}{colour}"
            assert 0 <= metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"] <= 1
        assert metrics[f"test/games_{name}"] == 2 and 0 <= metrics[f"test/draw_rate_{name}"] <= 1
    assert metrics["test/simulations"] == 2 and metrics["test/net_evals_per_s"] > 0
    assert metrics["test/elo_first"] == 0 and np.isfinite(metrics["test/elo_last"])
    assert metrics["train/generations"] == 2 and metrics["num_params"] == summary["num_params"]
    assert {metrics[f"accept/{k}"] for k in ("win_rate_vs_random", "win_rate_vs_random_net", "win_rate_vs_mcts",
                                             "win_rate_last_vs_first")} <= {0.0, 1.0}
    reports = tmp_path / "artifacts/reports/go-5x5-alphago-zero"
    moves = replay_sgf(reports / "vs_mcts_game0.sgf", 9)
    with open(reports / "vs_mcts_games.csv") as f:
        assert int(next(csv.DictReader(f))["moves"]) == moves
    assert (reports / "vs_mcts_game0.png").is_file() and (reports / "elo.png").is_file()
    runs = mlflow_runs(tmp_path / "mlflow.db")
    assert {(r["name"], r["tags"].get("stage"), r["status"]) for r in runs} == {
        ("alphago-zero", "train", "FINISHED"), ("alphago-zero", "evaluate", "FINISHED")}
    assert all(r["tags"]["profile"] == "full" and r["params"]["game.board_size"] == "9"
               and r["params"]["model.channels"] == "16" for r in runs)
    (train_run,) = [r for r in runs if r["tags"]["stage"] == "train"]
    assert train_run["params"]["hardware/go_device"] == "cpu"   # trainer=cpu here; the full profile's gpu trainer: cuda


def _cfg(*overrides):
    return compose_config(*SMOKE, *overrides)


def test_unsupported_board_size_is_one_line_and_leaves_no_run(workdir):
    """In process (the entry point prints a DlzooError as `error: <message>`, exit code 2: tests/test_bad_input.py)."""
    from dlzoo.errors import ConfigError
    from dlzoo.training.train import train

    with pytest.raises(ConfigError) as info:
        train(_cfg("game.board_size=7"))
    assert str(info.value) == "board size 7 is not supported by this recipe (game.supported_sizes: 5, 9)"
    assert not (workdir / "mlflow.db").exists() or mlflow_runs(workdir / "mlflow.db") == []
    assert not (workdir / "artifacts").exists()


def test_checkpoint_of_another_board_is_one_line(smoke_run, monkeypatch, tmp_path):
    from dlzoo.errors import ConfigError
    from dlzoo.evaluation.evaluate import evaluate

    cwd, train, _ = smoke_run
    assert train.returncode == 0
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    other = tmp_path / "nine.ckpt"
    net = ZeroNet(9, channels=8, blocks=1)   # the smoke model's shape, trained on 9x9
    torch.save({"state_dict": net.state_dict(), CHECKPOINT_KEY: stamp("go-5x5", "alphago-zero", "go-5x5-alphago-zero")}, other)
    runs_before = len(mlflow_runs(cwd / "mlflow.db"))
    with pytest.raises(ConfigError) as info:
        evaluate(_cfg(f"checkpoint_path={other}"))
    assert str(info.value).startswith("the checkpoint was trained on a 9x9 board, this recipe plays 5x5")
    assert "\n" not in str(info.value)
    assert len(mlflow_runs(cwd / "mlflow.db")) == runs_before


def test_distillation_through_the_compress_stage_plays_its_parent(smoke_run):
    """`compress=go-distill`: a smaller ZeroNet, measured by the Go evaluator, including the arena against the
    uncompressed network at equal simulations; the parent's own row plays that arena against itself."""
    cwd, train, _ = smoke_run
    assert train.returncode == 0
    proc = run_entry("compress", *SMOKE, "compress=go-distill", cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((cwd / "metrics/go-5x5/alphago-zero-go-distill.json").read_text())
    assert 0 < metrics["student_fraction"] <= 0.5 and metrics["student_params"] < metrics["teacher_params"]
    assert metrics["distill_rounds"] == 2 and metrics["distill_positions"] > 0
    for prefix in ("", "parent/"):
        key = f"{prefix}test/win_rate_vs_parent"
        assert metrics[f"{prefix}test/games_vs_parent"] == 4
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
        assert f"{prefix}test/win_rate_vs_mcts" in metrics
    # the student's numbers are its own: no teacher generations, Elo or training figures
    assert not any(k.startswith(("test/elo", "train/", "test/win_rate_last_vs_first")) for k in metrics)
    runs = [r for r in mlflow_runs(cwd / "mlflow.db") if r["tags"].get("stage") == "compress"]
    assert [r["name"] for r in runs] == ["alphago-zero-go-distill"] and runs[0]["status"] == "FINISHED"
    student = ZeroNet(5, channels=4, blocks=1, value_hidden=8)
    from dlzoo.go.evaluate import load_zero_net

    parent = load_zero_net(cwd / "artifacts/models/go-5x5-alphago-zero/best.ckpt")
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in parent.parameters())
