"""The README's command as a user types it, in the default suite: `make repro PROFILE=smoke TARGETS=<stage>` in a
fresh copy, from a shell where no virtualenv is active, runs one family's chain with the venv's `python`
(the whole pipeline, ~100 stages, is tests/test_make_repro.py: `make test-e2e`, run by CI after this suite).

Then: the working tree and the project's store are as they were (the smoke run is a `dvc exp run --temp` logging to
mlflow-smoke.db); once the experiment is applied, exactly that chain ran, DVC calls it up to date, each stage
imported only project files among its deps, the numbers reached the DVC metrics file and the smoke store alike,
and typing it again runs nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import mlflow_runs
from test_make_repro import activated_env, fresh_copy, sh, user_env

TARGET = "evaluate_timeseries-sine-rnn"
CHAIN = {"prepare_timeseries-sine", "train_timeseries-sine-rnn", TARGET}


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    base = tmp_path_factory.mktemp("typed")
    dst = fresh_copy(base)
    audit = base / "imports.jsonl"
    out = sh("make", "repro", "PROFILE=smoke", f"TARGETS={TARGET}", cwd=dst, env=user_env({"DLZOO_IMPORT_AUDIT": str(audit)}))
    status = sh("git", "status", "--porcelain", cwd=dst).stdout
    assert status == "" and not (dst / "mlflow.db").exists(), status   # nothing tracked changed, no main store
    (name,) = sh("dvc", "exp", "ls", "--name-only", cwd=dst, env=activated_env()).stdout.split()
    # `dvc exp apply` brings the experiment's lock, params and metrics, then checks out every output the lock names:
    # those of the stages this run did not reach are in no cache here, so it ends non-zero after applying the rest
    subprocess.run(["dvc", "exp", "apply", name], cwd=dst, env=activated_env(), capture_output=True, timeout=600)
    sh("dvc", "checkout", *sorted(CHAIN), cwd=dst, env=activated_env())
    return dst, out.stdout + out.stderr, audit


def test_the_chain_ran_with_the_venv_and_is_up_to_date(typed):
    dst, log, _ = typed
    assert set(re.findall(r"Running stage '([^']+)'", log)) == CHAIN
    status = sh("dvc", "status", "--json", TARGET, cwd=dst, env=activated_env()).stdout
    assert json.loads(status or "{}") == {}
    assert "done in" in log


def test_each_stage_imported_only_its_deps(typed):
    dst, _, audit = typed
    stages = yaml.safe_load((dst / "dvc.yaml").read_text())["stages"]
    seen = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {r["stage"] for r in seen} == CHAIN
    for record in seen:
        files = {str(Path(f).resolve().relative_to(dst.resolve())) for f in record["files"]}
        assert files <= set(stages[record["stage"]]["deps"]), sorted(files - set(stages[record["stage"]]["deps"]))


def test_metrics_reach_dvc_and_mlflow_alike(typed):
    dst, _, _ = typed
    on_disk = json.loads((dst / "metrics/timeseries-sine/rnn.json").read_text())
    runs = [r for r in mlflow_runs(dst / "mlflow-smoke.db") if r["tags"]["stage"] == "evaluate"]
    assert len(runs) == 1 and runs[0]["tags"]["profile"] == "smoke"
    assert runs[0]["metrics"]["test/mae"] == pytest.approx(on_disk["test/mae"])


def test_typing_it_again_runs_nothing(typed):
    dst, _, _ = typed
    out = sh("make", "repro", "PROFILE=smoke", f"TARGETS={TARGET}", cwd=dst).stdout
    assert "Running stage" not in out


def test_a_temporary_experiment_logs_into_the_repositorys_store(typed):
    """`dvc exp run --temp` runs in a copy under .dvc/tmp/exps that DVC deletes afterwards: the runs (and their
    artifacts) still land in the repository's mlflow.db and mlartifacts/, tagged with the experiment's name."""
    dst, _, _ = typed
    before = {r["run_id"] for r in mlflow_runs(dst / "mlflow.db")} if (dst / "mlflow.db").exists() else set()
    # the copy's own src/ (its venv is this checkout's, installed editable from here), as `make` sets it
    env = {**activated_env(), "PYTHONPATH": str(dst / "src")}
    out = sh("dvc", "exp", "run", "--temp", "-n", "temp-gru", "-S", "profile=smoke", "evaluate_timeseries-sine-gru",
             cwd=dst, env=env)
    assert set(re.findall(r"Running stage '([^']+)'", out.stdout + out.stderr)) == {"train_timeseries-sine-gru",
                                                                                  "evaluate_timeseries-sine-gru"}
    new = [r for r in mlflow_runs(dst / "mlflow.db") if r["run_id"] not in before]
    assert sorted(r["tags"]["stage"] for r in new) == ["evaluate", "train"]
    (train_run,) = [r for r in new if r["tags"]["stage"] == "train"]
    assert train_run["tags"]["dvc.exp_name"] == "temp-gru" and train_run["name"] == "gru"
    curves = list((dst / "mlartifacts").rglob(f"{train_run['run_id']}/artifacts/plots/learning_curve.csv"))
    assert curves, "the train run's artifacts are not in the repository's mlartifacts/"
    assert not list((dst / ".dvc" / "tmp").rglob("mlflow.db"))


def test_a_users_own_remote_carries_every_output_to_a_fresh_clone(typed, tmp_path):
    """docs/serving.md "Your own DVC remote": `dvc push` to a second remote (a local folder here; S3 or SSH the same
    way), then a fresh `git clone` with `dvc pull` has every stage output without training, and `dvc repro` has nothing
    to do."""
    dst, _, _ = typed
    env = activated_env()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh(*git, "add", "-A", cwd=dst)
    sh(*git, "commit", "-qm", "the smoke chain's results", cwd=dst)
    remote = tmp_path / "my-remote"
    sh("dvc", "remote", "add", "--local", "mine", str(remote), cwd=dst, env=env)
    sh("dvc", "push", "-r", "mine", "data.dvc", *sorted(CHAIN), cwd=dst, env=env)

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(dst), str(clone), cwd=tmp_path)
    sh("dvc", "remote", "add", "--local", "mine", str(remote), cwd=clone, env=env)
    # the chain's stages by name: this repository ran only them, so the other stages' outputs are in no remote
    sh("dvc", "pull", "-r", "mine", "data.dvc", *sorted(CHAIN), cwd=clone, env=env)
    model = "artifacts/models/timeseries-sine-rnn/best.ckpt"
    assert (clone / model).read_bytes() == (dst / model).read_bytes()
    assert json.loads(sh("dvc", "status", "--json", TARGET, cwd=clone, env=env).stdout or "{}") == {}
    out = sh("dvc", "repro", TARGET, cwd=clone, env=env)
    assert "Running stage" not in out.stdout + out.stderr
