"""End to end: `dvc repro` of the whole pipeline on the smoke profile in a temporary copy of the repo,
then the MLflow runs, their tags and metrics, DVC metrics, caching and a one-command variant."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, mlflow_runs, sqlite_ok

BIN = Path(sys.executable).parent


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_STAGE")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # stage commands call `python` of this venv
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# The default run keeps one family per task, plus the compression parents and the families the tests below
# name (~30 stages, ~7 min); `full` (slow) runs every family's stages (~55, ~12 min). Every family's
# code runs in-process in tests/test_families_smoke.py either way.
CORE_FAMILIES = {"binary-addition-rnn", "timeseries-sine-gru", "timeseries-sunspots-lstm", "digits-cnn", "digits-densenet",
                 "digits-generative-vae", "segmentation-shapes-unet", "detection-shapes-yolo", "embeddings-en-skipgram",
                 "translation-en-ja-transformer"}


@pytest.fixture(scope="module", params=["core", pytest.param("full", marks=pytest.mark.slow)])
def repo_copy(request, tmp_path_factory):
    """The repo's files (as git sees them: tracked + new, nothing ignored), the raw data, smoke profile."""
    dst = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in listed.stdout.splitlines():
        src = REPO / rel
        if src.is_file() and not rel.startswith(("metrics/", "plots/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    if (REPO / "data").is_dir():
        shutil.copytree(REPO / "data", dst / "data")
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "smoke"
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    # Compression: three stages (~10-20 s each; tests/test_compression.py runs every method): a quantisation,
    # a multi-seed distillation, and translation's int8 (its report needs a model).
    kept = {"digits-cnn-static-int8", "digits-densenet-distill", "translation-en-ja-transformer-dynamic-int8"}
    table = yaml.safe_load((dst / "compressions.yaml").read_text())
    table["compressions"] = {k: v for k, v in table["compressions"].items() if k in kept}
    (dst / "compressions.yaml").write_text(yaml.safe_dump(table))
    if request.param == "core":
        families = yaml.safe_load((dst / "families.yaml").read_text())
        families["families"] = {k: v for k, v in families["families"].items() if k in CORE_FAMILIES}
        (dst / "families.yaml").write_text(yaml.safe_dump(families))
    sh("git", "init", "-q", cwd=dst)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=dst)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=dst)
    repro = sh("dvc", "repro", cwd=dst)
    return dst, repro.stdout


def stages(dvc_yaml: Path) -> list[str]:
    """Every expanded stage name (`train@digits-cnn`, ...), as DVC itself lists them."""
    listed = sh("dvc", "stage", "list", "--name-only", cwd=dvc_yaml.parent).stdout.split()
    return [name for name in listed if "@" in name]


def test_repro_runs_every_stage_and_writes_metrics(repo_copy):
    dst, log = repo_copy
    for stage in stages(dst / "dvc.yaml"):
        assert f"Running stage '{stage}'" in log
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=dst).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert 0.0 <= metrics["metrics/binary-addition/rnn.json"]["data"]["test/accuracy"] <= 1.0
    families = yaml.safe_load((dst / "families.yaml").read_text())["families"]
    for family in families.values():
        assert f"metrics/{family['task']}/{family['family']}.json" in metrics
    for task in ("timeseries-sine", "timeseries-sunspots"):
        for family in ("naive", "seasonal-naive", "ar"):
            assert metrics[f"metrics/{task}/{family}.json"]["data"]["test/mae"] > 0
    compressions = yaml.safe_load((dst / "compressions.yaml").read_text())["compressions"]
    for c in compressions.values():
        assert "size_mb" in metrics[f"metrics/{c['task']}/{c['family']}-{c['method']}.json"]["data"]


def test_mlflow_runs_tags_and_metrics_match_dvc(repo_copy):
    dst, _ = repo_copy
    db = dst / "mlflow.db"
    assert sqlite_ok(db)
    runs = mlflow_runs(db)
    families = yaml.safe_load((dst / "families.yaml").read_text())["families"]
    assert {r["experiment"] for r in runs} == {f["task"] for f in families.values()}
    by_stage = {r["tags"]["dvc_stage"]: r for r in runs if r["tags"]["stage"] == "train"}
    assert set(by_stage) == {s for s in stages(dst / "dvc.yaml") if s.startswith("train@")}
    for run in runs:
        assert run["status"] == "FINISHED"
        assert run["tags"]["profile"] == "smoke" and re.fullmatch(r"[0-9a-f]{40}", run["tags"]["git_commit"])
    evaluated = [r for r in runs if r["tags"]["stage"] == "evaluate" and r["experiment"] == "timeseries-sunspots"]
    networks = {f["family"] for f in families.values() if f["task"] == "timeseries-sunspots"}
    assert {r["name"] for r in evaluated} == networks | {"naive", "seasonal-naive", "ar"}
    for run in evaluated:
        on_disk = json.loads((dst / f"metrics/timeseries-sunspots/{run['name']}.json").read_text())
        assert run["metrics"]["test/mae"] == pytest.approx(on_disk["test/mae"])
    int8 = next(r for r in runs if r["tags"]["dvc_stage"] == "compress@digits-cnn-static-int8")
    assert int8["experiment"] == "digits" and int8["name"] == "cnn-static-int8"
    assert int8["tags"]["stage"] == "compress" and int8["tags"]["method"] == "static-int8"
    assert int8["tags"]["parent_run_id"] == json.loads((dst / "artifacts/models/digits-cnn/train_summary.json").read_text())["run_id"]


def test_unchanged_repro_runs_nothing(repo_copy):
    dst, _ = repo_copy
    out = sh("dvc", "repro", cwd=dst).stdout
    assert "Running stage" not in out and "up to date" in out


def test_one_command_variant_reruns_only_that_family(repo_copy):
    dst, _ = repo_copy
    out = sh("dvc", "exp", "run", "-S", "conf/experiment/timeseries-sine-gru.yaml:model.net.hidden_size=8", cwd=dst).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"train@timeseries-sine-gru", "evaluate@timeseries-sine-gru"}
    table = json.loads(sh("dvc", "exp", "show", "--json", cwd=dst).stdout)
    assert "hidden_size" in json.dumps(table)
    hidden = [r for r in mlflow_runs(dst / "mlflow.db") if r["tags"]["stage"] == "train" and r["name"] == "gru"
              and r["experiment"] == "timeseries-sine"]
    assert sorted(r["params"]["model.net.hidden_size"] for r in hidden) == ["32", "8"]
