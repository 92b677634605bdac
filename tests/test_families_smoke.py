"""A smoke fit + evaluate of every family, in-process, checking what lands in MLflow and metrics/."""

import json
from pathlib import Path

import pytest

from conftest import mlflow_runs, prepare_data
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.training.train import train

RAW = Path(__file__).resolve().parents[1] / "data"
# Supervised families only: the reinforcement-learning recipes (control-*) and the self-play ones (go-*) have
# no dataset to prepare and no val/loss; tests/test_control.py and tests/test_go.py fit and evaluate them
# through the same entry points.
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
                     if not p.stem.endswith("baselines") and not p.stem.startswith(("control-", "go-")))


# Generated datasets are shrunk further than the smoke profile does.
TINY_DATA = {"shapes": ["data.prepare.n_train=8", "data.prepare.n_val=4", "data.prepare.n_test=4", "data.prepare.image_size=64"],
             # raw text from the repository (tests run in a scratch directory), its first 5,000 lines
             "embeddings-en": [f"data.prepare.train_file={RAW}/enja/train.en", f"data.prepare.val_file={RAW}/enja/dev.en", "data.prepare.max_lines=5000"],
             "enja": [f"data.prepare.raw_dir={RAW}/enja", "data.prepare.limit_train=2000", "data.prepare.n_val=200"],
             "fsdd": [f"data.prepare.raw_dir={RAW}/fsdd/recordings"]}


# Every stage of every family runs through DVC in tests/test_make_repro.py (`make repro PROFILE=smoke`), so
# these in-process runs (handy under a debugger) are `slow` (`make test-slow`) to keep the suite under 15 minutes.
@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_fit_and_evaluate(experiment, workdir, make_cfg):
    cfg = make_cfg(f"experiment={experiment}", "profile=smoke")
    cfg = make_cfg(f"experiment={experiment}", "profile=smoke", "tracking.log_model=false", *TINY_DATA.get(cfg.data.name, []))
    prepare_data(cfg)
    summary = train(cfg)
    assert Path(summary["checkpoint"]).is_file()
    metrics = evaluate(cfg)

    on_disk = json.loads(Path(cfg.paths.metrics_file).read_text())
    assert on_disk == pytest.approx(metrics)
    key = cfg.results.metric  # the task's headline metric, as its recipe declares it
    assert key in on_disk and on_disk["num_params"] > 0

    runs = mlflow_runs(workdir / "mlflow.db")
    assert {r["tags"]["stage"] for r in runs} == {"train", "evaluate"}
    for run in runs:
        assert run["experiment"] == cfg.task and run["name"] == cfg.family and run["status"] == "FINISHED"
        assert {"task", "family", "stage", "git_commit", "dvc_stage"} <= set(run["tags"])
    train_run = next(r for r in runs if r["tags"]["stage"] == "train")
    eval_run = next(r for r in runs if r["tags"]["stage"] == "evaluate")
    assert "val/loss" in train_run["metrics"] and train_run["params"]["model.net._target_"]
    assert eval_run["metrics"][key] == pytest.approx(on_disk[key])
    assert (Path(cfg.paths.plots_dir) / "learning_curve.csv").is_file()


def test_binary_addition_logs_gradient_norm_and_registers_model(workdir, make_cfg):
    from mlflow.tracking import MlflowClient

    cfg = make_cfg("experiment=binary-addition-rnn", "profile=smoke", "tracking.log_model=true", "tracking.register_model=true")
    prepare_data(cfg)
    summary = train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    history = client.get_metric_history(summary["run_id"], "train/grad_norm")
    assert len(history) >= 4  # logged every step
    versions = client.search_model_versions("name='binary-addition-rnn'")
    assert len(versions) == 1 and versions[0].run_id == summary["run_id"]
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"config.yaml", "plots", "checkpoints"} <= artifacts
    # the logged model loads back and adds
    import mlflow
    import numpy as np

    from dlzoo.data.binary_addition import encode

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"models:/binary-addition-rnn/{versions[0].version}")
    assert model(__import__("torch").from_numpy(encode(np.array([1]), np.array([2]), 8)[0])).shape == (1, 9)


@pytest.mark.parametrize("experiment", ["timeseries-sunspots-gru", "digits-cnn"])
def test_training_is_reproducible(experiment, workdir, make_cfg):
    cfg = make_cfg(f"experiment={experiment}", "profile=smoke", "tracking.log_model=false")
    prepare_data(cfg)
    first = train(cfg)["best_score"]
    second = train(cfg)["best_score"]
    assert first == second
