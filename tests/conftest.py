"""Shared fixtures: compose the project's Hydra config in-process, in a scratch working directory
(so artifacts/, metrics/ and mlflow.db of a test never touch the repository's own)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# The suite runs on two pytest-xdist workers (pyproject addopts): `make repro PROFILE=smoke` in a fresh copy
# (tests/test_make_repro.py) is one long serial chain of stage processes, mostly start-up on one core, while
# the other tests run beside it. One intra-op thread per worker keeps the two from fighting over the cores
# (torch's OpenMP threads spin-wait); the make-repro copy runs its stages in a user's environment, untouched.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest modules, longest first: two workers take modules in this order, so a long one never starts last and
# leaves the other worker idle (the rest follow in name order).
LONGEST_FIRST = ("test_make_repro.py", "test_demo.py", "test_make_repro_targets.py", "test_cluster.py",
                 "test_champions.py", "test_resume.py", "test_go.py", "test_go_lee.py", "test_tracking_server.py")


def pytest_collection_modifyitems(session, config, items):
    """The make-repro chain first (the critical path), then the other long modules; stable within a module."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _no_mlflow_experiment_leak():
    """`mlflow.set_experiment` leaves MLFLOW_EXPERIMENT_ID in os.environ and an active experiment in the process;
    a later test's `start_run(run_id=...)` in another experiment would then be refused. Restore both."""
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    yield
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None
    if before is None:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = before


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tmp_path


def compose_config(*overrides: str):
    """The project's config composed with `overrides`, Hydra left cleared (usable outside fixtures)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def make_cfg():
    """make_cfg('experiment=binary-addition-rnn', 'profile=smoke') -> composed DictConfig."""
    yield compose_config
    GlobalHydra.instance().clear()


def prepare_data(cfg) -> None:
    instantiate(cfg.data.prepare, out_dir=cfg.data.dir)
    ood_dir = OmegaConf.select(cfg, "evaluator.ood_dir")
    if ood_dir:  # the evaluator's out-of-distribution split: the test's (tiny) sizes, the OOD generator setting
        style = {k: v for k, v in OmegaConf.load(REPO / "conf/data/shapes-ood.yaml").prepare.items()
                 if not k.startswith("n_")}
        instantiate(cfg.data.prepare, out_dir=ood_dir, **style)


def run_entry(script: str, *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `pipelines/<script>.py` as DVC would, from `cwd`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_STAGE")}
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / f"{script}.py"), *overrides, "hydra.run.dir=outputs/test"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def mlflow_runs(db: Path) -> list[dict]:
    """All runs in an MLflow SQLite store with their tags, read via MLflow's own client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            runs.append({"experiment": exp.name, "name": run.info.run_name, "status": run.info.status, "run_id": run.info.run_id,
                         "tags": run.data.tags, "metrics": run.data.metrics, "params": run.data.params})
    return runs


def sqlite_ok(db: Path) -> bool:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def changed_keys(full: list[str], cut: list[str]) -> set[str]:
    """The resolved config keys whose values differ between two compositions."""
    from dlzoo.tracking import flat_params

    a, b = flat_params(compose_config(*full)), flat_params(compose_config(*cut))
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def run_full_profile_9x9(experiment: str, budget: list[str], cwd: Path) -> tuple[dict, dict]:
    """The full profile's recipe for `experiment` with only `budget` (key=value overrides) changed, plus the cpu
    trainer (the full profile picks trainer=gpu, refused without CUDA; the Go evaluator's device follows it) and
    no logged model: board 9x9 and the composed config otherwise the full profile's; then the train and evaluate
    stages as DVC runs them.
    Returns the train summary and the checkpoint."""
    import torch

    full = compose_config(f"experiment={experiment}", "profile=full")
    assert full.game.board_size == 9 and (full.model.channels, full.model.blocks) == (64, 6)
    overrides = [f"experiment={experiment}", "profile=full", "trainer=cpu", "tracking.log_model=false", *budget]
    follows_trainer = {"evaluator.accelerator"} if "accelerator" in full.evaluator else set()   # ${trainer.accelerator}
    assert changed_keys([f"experiment={experiment}", "profile=full"], overrides) == {o.split("=")[0] for o in budget} | {
        "tracking.log_model", "trainer.accelerator", "trainer.precision"} | follows_trainer
    for stage in ("train", "evaluate"):
        done = run_entry(stage, *overrides, cwd=cwd, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    model_dir = cwd / "artifacts/models" / experiment
    return (json.loads((model_dir / "train_summary.json").read_text()),
            torch.load(model_dir / "best.ckpt", weights_only=True))


def replay_sgf(path, board_size: int) -> int:
    """Replay an SGF sample game with OpenSpiel's rules on `board_size` (sgfmill's (row, col): row 0 is the first
    line, as action r * N + c); every move is legal, the game ends, and its result is the one recorded. The moves."""
    from sgfmill import sgf

    from dlzoo.go.game import load_game

    record = sgf.Sgf_game.from_bytes(path.read_bytes())
    assert record.get_size() == board_size
    state = load_game(board_size, float(record.get_root().get("KM"))).new_initial_state()
    moves = [node.get_move() for node in record.get_main_sequence()[1:]]
    for colour, point in moves:
        assert colour == "bw"[state.current_player()]
        action = board_size * board_size if point is None else point[0] * board_size + point[1]
        assert point is None or max(point) < board_size
        assert action in state.legal_actions()
        state.apply_action(action)
    assert state.is_terminal()
    black = state.returns()[0]
    assert record.get_root().get("RE") == ("B+" if black > 0 else "W+" if black < 0 else "0")
    return len(moves)


# A few tiny generated COCO splits, shared by the COCO-module and generator tests.
TINY_SHAPES = dict(image_size=64, n_train=6, n_val=2, n_test=2, max_objects=4, seed=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from dlzoo.data.shapes import prepare

    out = tmp_path_factory.mktemp("shapes")
    return out, prepare(str(out), **TINY_SHAPES)


def user_env(extra: dict | None = None) -> dict:
    """A login shell's environment: no venv on PATH, nothing activated, no project variables."""
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and not Path(p, "activate").exists() and ".venv" not in p]
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER") if k in os.environ}
    env["PATH"] = os.pathsep.join(path)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, cwd: Path, timeout: float = 120):
    """`make serve MODEL=<model_uri>` as a user types it (a shell with nothing activated, the store named by
    MLFLOW_TRACKING_URI) on a free loopback port; yields post(inputs) -> the JSON answer's "predictions".
    The server is stopped on the way out."""
    import signal
    import socket
    import urllib.request

    from dlzoo.serve import wait_until_answering

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "serve", f"MODEL={model_uri}",
                               f"SERVE_PORT={port}"], cwd=cwd, env=user_env({"MLFLOW_TRACKING_URI": tracking_uri}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def post(inputs):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": inputs}).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]

    post.url = f"http://127.0.0.1:{port}/invocations"
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, timeout, "make serve")
        yield post
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
