"""`make serve` refuses what it cannot serve with one line, before any server starts."""

from __future__ import annotations

import subprocess

import pytest

from conftest import REPO, user_env
from dlzoo.errors import ConfigError
from dlzoo.serve import check_model, model_uri, server_env


def test_a_task_or_a_model_is_named_not_both_nor_neither():
    assert model_uri("digits", None) == "models:/digits@champion"
    assert model_uri(None, "models:/digits-cnn/3") == "models:/digits-cnn/3"
    for task, model in ((None, None), ("digits", "models:/digits-cnn/3")):
        with pytest.raises(ConfigError, match="name a task"):
            model_uri(task, model)


def test_a_missing_store_model_or_malformed_uri_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such store"):
        check_model("models:/digits@champion", f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()   # looking did not create it
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_registered_model("digits")
    with pytest.raises(ConfigError, match=r"models:/digits@champion: no such registered model version"):
        check_model("models:/digits@champion", uri)
    with pytest.raises(ConfigError, match="expected models:/<name>/<version>"):
        check_model("runs:/abc/model", uri)


def test_the_server_finds_uvicorn_with_nothing_activated():
    """MLflow's scoring server starts `uvicorn` by name: the venv's bin goes first on the server's PATH."""
    env = server_env("sqlite:///mlflow.db")
    found = subprocess.run(["which", "uvicorn"], env=env, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.startswith(env["PATH"].split(":")[0])


def test_make_serve_without_a_store_says_so_and_exits_2(tmp_path):
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "serve", "TASK=digits"], cwd=tmp_path,
                          env=user_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == f"error: sqlite:///{tmp_path / 'none.db'}: no such store (make repro, or make " \
                                          "try for outputs/try/mlflow.db, makes one)"
