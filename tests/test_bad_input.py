"""Bad input gets a one-line error that names the fix, and never damages what was written before."""

import pytest
import torch

from conftest import mlflow_runs, prepare_data, run_entry, sqlite_ok
from dlzoo.errors import CheckpointError, ConfigError, DataError
from dlzoo.checkpoints import load_checkpoint
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.training.train import train
from dlzoo.training.trainer import check_trainer_config


def test_unknown_family_is_hydras_clear_error(workdir):
    result = run_entry("train", "experiment=binary-addition-transformer", cwd=workdir)
    assert result.returncode != 0
    assert "Could not find 'experiment/binary-addition-transformer'" in result.stderr
    assert "Available options" in result.stderr and "binary-addition-rnn" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_hydras_clear_error(workdir):
    result = run_entry("train", "experiment=binary-addition-rnn", "model.net.hiden_size=8", cwd=workdir)
    assert result.returncode != 0
    assert "Key 'hiden_size' is not in struct" in result.stderr and "Traceback" not in result.stderr


def test_no_experiment_chosen(workdir, make_cfg):
    with pytest.raises(ConfigError, match="experiment="):
        train(make_cfg("profile=smoke"))


def test_missing_data_stops_before_any_run(workdir):
    result = run_entry("train", "experiment=timeseries-sine-gru", "profile=smoke", cwd=workdir)
    assert result.returncode == 2
    assert "error: prepared data missing in artifacts/data/timeseries-sine/" in result.stderr
    assert "dvc repro" in result.stderr and "Traceback" not in result.stderr
    assert not (workdir / "mlflow.db").exists() or mlflow_runs(workdir / "mlflow.db") == []


@pytest.fixture
def trained(workdir, make_cfg):
    cfg = make_cfg("experiment=timeseries-sunspots-rnn", "profile=smoke", "tracking.log_model=false")
    prepare_data(cfg)
    train(cfg)
    evaluate(cfg)
    return cfg


def test_corrupt_checkpoint_is_refused_and_store_kept_intact(trained, workdir):
    db = workdir / "mlflow.db"
    runs_before = mlflow_runs(db)
    bad = workdir / "corrupt.ckpt"
    bad.write_bytes(b"\x80\x04 this is not a checkpoint")
    result = run_entry("evaluate", "experiment=timeseries-sunspots-rnn", "profile=smoke", f"checkpoint_path={bad}", cwd=workdir)
    assert result.returncode == 2
    assert "is not a readable PyTorch checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert sqlite_ok(db) and len(mlflow_runs(db)) == len(runs_before)


def test_missing_checkpoint_names_the_stage(trained, workdir):
    with pytest.raises(CheckpointError, match=r"dvc repro train_timeseries-sunspots-rnn"):
        load_checkpoint(workdir / "nope.ckpt", "timeseries-sunspots", "rnn")


def test_checkpoint_from_another_family_is_refused(trained, workdir, make_cfg):
    other = make_cfg("experiment=timeseries-sunspots-gru", "profile=smoke", f"checkpoint_path={trained.paths.model_dir}/best.ckpt")
    with pytest.raises(CheckpointError, match="holds a timeseries-sunspots/rnn model, not timeseries-sunspots/gru"):
        evaluate(other)


def test_checkpoint_that_does_not_fit_the_config(trained, make_cfg):
    changed = make_cfg("experiment=timeseries-sunspots-rnn", "profile=smoke", "model.net.hidden_size=7")
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        evaluate(changed)


def test_foreign_checkpoint_without_stamp(workdir):
    path = workdir / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not written by a dlzoo runner"):
        load_checkpoint(path, "binary-addition", "rnn")


def test_a_failing_training_run_leaves_earlier_runs_and_store_intact(trained, workdir, make_cfg):
    db = workdir / "mlflow.db"
    runs_before = mlflow_runs(db)
    cfg = make_cfg("experiment=timeseries-sunspots-rnn", "profile=smoke", "checkpoint.monitor=val/not_logged", "tracking.log_model=false")
    with pytest.raises(Exception):
        train(cfg)
    assert sqlite_ok(db)
    after = {r["name"] + r["tags"]["stage"] + r["status"] for r in mlflow_runs(db)}
    assert {r["name"] + r["tags"]["stage"] + r["status"] for r in runs_before} <= after


def test_fsdp_on_cpu_is_a_one_line_error(workdir, make_cfg):
    with pytest.raises(ConfigError, match="trainer=fsdp needs CUDA GPUs"):
        check_trainer_config(make_cfg("experiment=binary-addition-rnn", "trainer=fsdp").trainer)
    result = run_entry("train", "experiment=binary-addition-rnn", "trainer=fsdp", cwd=workdir)
    assert result.returncode == 2 and "error: trainer=fsdp needs CUDA GPUs" in result.stderr


@pytest.mark.parametrize("override,match", [("trainer.precision=16-mixed", "needs a GPU"), ("trainer=gpu", "no CUDA GPU")])
def test_gpu_only_settings_on_cpu(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        check_trainer_config(make_cfg("experiment=binary-addition-rnn", override).trainer)


def test_bad_prepare_values(tmp_path):
    from dlzoo.data.timeseries import prepare_sine

    with pytest.raises(ConfigError):
        prepare_sine(str(tmp_path), test_fraction=0.9)
    with pytest.raises(DataError):
        from dlzoo.data.timeseries import load_series

        (tmp_path / "series.csv").write_text("t,value,split\n")
        load_series(tmp_path)
