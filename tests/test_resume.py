"""A train stage killed with `kill -9` and started again resumes from its last complete epoch
(dlzoo.training.supervised, the digits recipes' runner): the same MLflow run, no metric point missing or repeated, and the weights,
learning curve and metric history of an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from conftest import REPO, compose_config, prepare_data

OVERRIDES = ["experiment=digits-cnn", "profile=smoke", "tracking.log_model=false", "trainer.max_epochs=5", "trainer.limit_train_batches=4",
             "hydra.run.dir=outputs/test"]
EPOCHS = 5


def _command(*extra: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines/train.py"), *OVERRIDES, *extra]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_STAGE", "MLFLOW_EXPERIMENT_ID")}


def _workdir(path: Path) -> Path:
    path.mkdir()
    cwd = os.getcwd()
    os.chdir(path)
    try:
        prepare_data(compose_config("experiment=digits-cnn", "profile=smoke"))
    finally:
        os.chdir(cwd)
    return path


def _kill_after_epochs(cwd: Path, epochs: int) -> None:
    """Start the stage and SIGKILL it as soon as it has printed `epochs` progress lines."""
    proc = subprocess.Popen(_command(), cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    for line in proc.stdout:
        if " epoch " in line and "s/epoch" in line:
            seen += 1
            if seen == epochs:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the stage ended by itself before epoch {epochs}"


def _train_run(cwd: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert len(runs) == 1, [r.info.run_id for r in runs]  # the restart continued the run, made no second one
    return client, runs[0]


def _history(client, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_a_killed_train_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    killed, straight = _workdir(tmp_path / "killed"), _workdir(tmp_path / "straight")
    _kill_after_epochs(killed, 2)
    point = killed / "artifacts/models/digits-cnn.resume"
    assert (point / "resume.json").is_file()
    resumed = subprocess.run(_command(), cwd=killed, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming digits-cnn after epoch" in resumed.stderr + resumed.stdout
    assert not point.exists()  # finished: the resume point is gone
    done = subprocess.run(_command(), cwd=straight, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    model = "artifacts/models/digits-cnn/best.ckpt"
    a = torch.load(killed / model, weights_only=True)["state_dict"]
    b = torch.load(straight / model, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = "plots/digits/cnn/learning_curve.csv"
    pd.testing.assert_frame_equal(pd.read_csv(killed / curve), pd.read_csv(straight / curve))
    assert list(pd.read_csv(killed / curve)["epoch"]) == list(range(EPOCHS))

    client_k, run_k = _train_run(killed)
    client_s, run_s = _train_run(straight)
    assert run_k.info.status == "FINISHED" and run_k.data.tags["dlzoo.resumes"] == "1"
    inputs = run_k.inputs.dataset_inputs  # the data as an MLflow dataset input, logged once
    assert [(i.dataset.name, len(i.dataset.digest)) for i in inputs] == [("digits", 32)]  # not DVC's: no DVC_STAGE
    # every metric's points (step, value) are the uninterrupted run's: none missing, none repeated
    assert set(run_k.data.metrics) == set(run_s.data.metrics) and "lr-AdamW" in run_s.data.metrics
    for key in run_s.data.metrics:
        assert _history(client_k, run_k, key) == _history(client_s, run_s, key), key
    for key in ("val/accuracy", "val/loss", "lr-AdamW"):
        steps = [step for step, _ in _history(client_k, run_k, key)]
        assert len(steps) == len(set(steps)) == EPOCHS, f"{key}: {steps}"


def test_a_resume_point_of_another_config_is_discarded(tmp_path, caplog):
    """A changed config (or code) never resumes from an old point: it is removed and the run starts afresh."""
    from dlzoo.training.run import RunContext
    from dlzoo.training.supervised import RESUME_FILE, fingerprint, load_resume_point

    cfg = compose_config("experiment=digits-cnn", "profile=smoke", f"paths.model_dir={tmp_path / 'model'}")
    other = compose_config("experiment=digits-cnn", "profile=smoke", f"paths.model_dir={tmp_path / 'model'}",
                           "model.optimizer.lr=0.5")
    assert fingerprint(cfg) == fingerprint(cfg) and fingerprint(cfg) != fingerprint(other)
    point = tmp_path / "model.resume"
    point.mkdir()
    (point / "epoch-2.ckpt").write_bytes(b"x")
    (point / RESUME_FILE).write_text('{"fingerprint": "%s", "checkpoint": "epoch-2.ckpt", "epoch": 2}' % fingerprint(other))
    ctx = RunContext(cfg, f"sqlite:///{tmp_path / 'mlflow.db'}")
    with caplog.at_level("INFO", logger="dlzoo"):
        assert load_resume_point(point, fingerprint(cfg), ctx) is None
    assert "discarding the resume point" in caplog.text and not point.exists()


def test_the_dataset_digest_is_the_one_dvc_lock_records(tmp_path, monkeypatch):
    from dlzoo.tracking.lineage import content_digest, dvc_digest

    data = tmp_path / "artifacts/data/digits"
    data.mkdir(parents=True)
    (data / "train.npz").write_bytes(b"123")
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  prepare_digits:\n    cmd: python pipelines/prepare.py\n    outs:\n"
                    "    - path: artifacts/data/digits\n      hash: md5\n      md5: 408ebec1384292118dfc42cc54ec73ba.dir\n")
    monkeypatch.chdir(tmp_path)
    assert dvc_digest("artifacts/data/digits", lock) == "408ebec1384292118dfc42cc54ec73ba.dir"
    assert dvc_digest("artifacts/data/other", lock) is None
    before = content_digest(data)
    (data / "train.npz").write_bytes(b"124")
    assert content_digest(data) != before and len(before) == 32


PROTOCOL = ["experiment=speech-fsdd-classification-wavenet-classifier", "profile=smoke", "tracking.log_model=false",
            "trainer.max_epochs=3",
            "hydra.run.dir=outputs/test"]


def _protocol_workdir(path: Path) -> Path:
    from test_wavenet import link_subset

    path.mkdir()
    cwd = os.getcwd()
    os.chdir(path)
    try:
        raw = link_subset(path / "raw", takes={0, 5, 6, 7})
        prepare_data(compose_config(*PROTOCOL[:2], f"data.prepare.raw_dir={raw}"))
    finally:
        os.chdir(cwd)
    return path


def test_a_killed_protocol_stage_resumes_its_fits_and_matches_an_uninterrupted_run(tmp_path):
    """The spoken-digit classifier's protocol runner (further fits for seed 43 and two left-out speakers, then the
    recipe's own), killed in its second fit's second epoch and started again: the finished fit is not trained
    again, the interrupted one continues from its last epoch, the rest run; every fit's weights and MLflow history
    are the uninterrupted run's, with one run per fit and the further fits nested under the stage's run."""
    from mlflow import MlflowClient

    command = [sys.executable, str(REPO / "pipelines/train.py"), *PROTOCOL]
    killed, straight = _protocol_workdir(tmp_path / "killed"), _protocol_workdir(tmp_path / "straight")
    proc = subprocess.Popen(command, cwd=killed, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    for line in proc.stdout:
        if "[loso-george] epoch " in line and "s/epoch" in line:
            seen += 1
            if seen == 2:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the stage ended by itself before loso-george's second epoch"
    work = killed / "artifacts/models/speech-fsdd-classification-wavenet-classifier.protocol"
    assert (work / "runs/seed-43/done.json").is_file() and (work / "runs/loso-george.resume/resume.json").is_file()
    resumed = subprocess.run(command, cwd=killed, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stderr + resumed.stdout
    assert "[seed-43] epoch" not in log and "[loso-jackson] epoch 1/3" in log   # finished: not trained again
    # loso-george from epoch 1's point, or epoch 2's if the kill came after the next epoch began
    assert re.search(r"resuming speech-fsdd-classification-wavenet-classifier after epoch [12] ", log)
    assert not work.exists()
    done = subprocess.run(command, cwd=straight, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    model_dir = Path("artifacts/models/speech-fsdd-classification-wavenet-classifier")
    for ckpt in ["best.ckpt", *(f"runs/{n}/best.ckpt" for n in ("seed-43", "loso-george", "loso-jackson"))]:
        a = torch.load(killed / model_dir / ckpt, weights_only=True)["state_dict"]
        b = torch.load(straight / model_dir / ckpt, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ckpt

    def runs(cwd):
        client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("speech-fsdd-classification")
        found = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
        by_name = {r.data.tags.get("protocol_run", "main"): r for r in found}
        assert len(by_name) == len(found) == 4, [r.data.tags.get("protocol_run") for r in found]   # one run per fit
        return client, by_name

    client_k, runs_k = runs(killed)
    client_s, runs_s = runs(straight)
    assert {n: r.data.tags.get("dlzoo.resumes") for n, r in runs_k.items()} == {
        "main": "1", "seed-43": None, "loso-george": "1", "loso-jackson": None}
    for name in ("seed-43", "loso-george", "loso-jackson"):
        assert runs_k[name].data.tags["mlflow.parentRunId"] == runs_k["main"].info.run_id
    for name, run_s in runs_s.items():
        run_k = runs_k[name]
        assert run_k.info.status == "FINISHED" and set(run_k.data.metrics) == set(run_s.data.metrics), name
        for key in run_s.data.metrics:
            assert _history(client_k, run_k, key) == _history(client_s, run_s, key), (name, key)
        assert "lr-AdamW" in run_s.data.metrics, name
