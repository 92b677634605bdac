"""The README's first command as a user types it: `make repro PROFILE=smoke` in a fresh copy of the repo,
from a shell where no virtualenv is active (PATH without any venv, no VIRTUAL_ENV, no PYTHONPATH).

Then what the pipeline promises: every stage ran and DVC calls the result up to date; each stage imported
only project files that are among its DVC deps; the smoke models beat chance; the MLflow runs carry the
standard tags and the same numbers as the DVC metrics; an unchanged pipeline runs nothing; editing one
family's model file makes DVC list only that family's stages; a one-command variant reruns only its family.

The copy shares this checkout's `.venv` (a symlink): installing the 5 GB stack again would only re-test pip.
What is under test is that `make` finds that environment and runs every stage command with it while nothing
is activated. The DVC remote is reached as the README says, `../shared/dvc-remote` beside the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, mlflow_runs, sqlite_ok, user_env

VENV = Path(sys.prefix)
# ~100 stages at ~13 s each (imports and DVC's own work): too long for the default suite's 15 minutes on 2 cores.
# `make test-e2e` runs it, and CI (.ci/run) runs it after the default suite; the default suite's as-typed check
# is tests/test_make_repro_targets.py (one family's chain).
pytestmark = pytest.mark.e2e


def sh(*args: str, cwd: Path, env: dict | None = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env or user_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def activated_env() -> dict:
    """The shell of a user who ran `. .venv/bin/activate`, as the README says after `make repro`."""
    env = user_env({"VIRTUAL_ENV": str(VENV)})
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return sh("dvc", *args, cwd=cwd, env=activated_env())


def fresh_copy(base: Path) -> Path:
    """A fresh copy of the repository in `base/dlzoo` (tracked and new files, nothing ignored: no artifacts, no
    mlflow.db), committed to its own git, with the venv linked and the DVC remote beside it as the README says."""
    dst = base / "dlzoo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in listed.stdout.splitlines():
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (base / "shared").symlink_to((REPO.parent / "shared").resolve())
    (dst / ".venv").symlink_to(VENV)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh("git", "init", "-q", cwd=dst)
    sh(*git, "add", "-A", cwd=dst)
    sh(*git, "commit", "-qm", "fresh copy", cwd=dst)
    return dst


def seed_store(db: Path) -> dict:
    """A project store with one registered version and its `champion` alias, as a user's main store has."""
    code = ("import mlflow, sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]); "
            "c.create_registered_model('digits'); "
            "v = c.create_model_version('digits', source='file:///nowhere/model'); "
            "c.set_registered_model_alias('digits', 'champion', v.version)")
    sh(str(VENV / "bin" / "python"), "-c", code, f"sqlite:///{db}", cwd=db.parent)
    return {"aliases": store_aliases(db), "bytes": db.read_bytes()}


def store_aliases(db: Path) -> list:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as con:
        return sorted(con.execute("select name, alias, version from registered_model_aliases").fetchall())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh copy with `make repro PROFILE=smoke` run in it. The run must leave the working tree and the project's
    store as they were: that is checked here, then the smoke experiment is applied to the copy's workspace (`dvc exp
    apply`), so the tests below read its metrics, plots and artifacts where a workspace run would have left them."""
    base = tmp_path_factory.mktemp("fresh")
    dst = fresh_copy(base)
    main_store = seed_store(dst / "mlflow.db")
    audit = base / "imports.jsonl"
    out = sh("make", "repro", "PROFILE=smoke", cwd=dst, env=user_env({"DLZOO_IMPORT_AUDIT": str(audit)}), timeout=4800)
    status = sh("git", "status", "--porcelain", cwd=dst).stdout
    assert status == "", f"make repro PROFILE=smoke changed the working tree:\n{status[:2000]}"
    assert store_aliases(dst / "mlflow.db") == main_store["aliases"]
    assert (dst / "mlflow.db").read_bytes() == main_store["bytes"], "make repro PROFILE=smoke wrote to mlflow.db"
    (name,) = dvc("exp", "ls", "--name-only", cwd=dst).stdout.split()
    # `dvc exp apply` brings the experiment's lock, params and metrics, then checks out every output the locks name:
    # profiles/full's (LunarLander) are in no cache here, so it ends non-zero after applying the rest; the default
    # pipeline's outputs are then checked out by name, which must succeed
    subprocess.run(["dvc", "exp", "apply", name], cwd=dst, env=activated_env(), capture_output=True, timeout=600)
    dvc("checkout", "dvc.yaml", cwd=dst)
    return dst, out.stdout + out.stderr, audit


def stage_table(dst: Path) -> dict:
    return yaml.safe_load((dst / "dvc.yaml").read_text())["stages"]


def metrics_of(dst: Path, rel: str) -> dict:
    return json.loads((dst / rel).read_text())


def test_make_repro_runs_every_stage(fresh):
    dst, log, _ = fresh
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran == set(stage_table(dst)), sorted(set(stage_table(dst)) - ran)
    # dvc.yaml: the pipeline `make repro PROFILE=smoke` runs (profiles/full/dvc.yaml holds the full profile's own)
    assert json.loads(dvc("status", "--json", "dvc.yaml", cwd=dst).stdout or "{}") == {}
    assert "epoch 2/2" in log and "done in" in log  # the progress and elapsed-time lines reach the user


def test_each_stage_imports_only_its_deps(fresh):
    dst, _, audit = fresh
    stages = stage_table(dst)
    seen = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {r["stage"] for r in seen} == set(stages)
    for record in seen:
        outside = [f for f in record["files"] if not Path(f).resolve().is_relative_to(dst.resolve())]
        assert not outside, f"{record['stage']} imported the project from outside its tree: {outside[:3]}"
        files = {str(Path(f).resolve().relative_to(dst.resolve())) for f in record["files"]}
        missing = files - set(stages[record["stage"]]["deps"])
        assert not missing, f"{record['stage']} imported {sorted(missing)}, which are not among its deps"


def test_compression_tradeoffs_render_as_dvc_plots(fresh):
    """Each task's compression table is a top-level plot of dvc.yaml (size, and latency where the task declares
    one, against the headline): `dvc plots show` draws it from the CSV its compress-report stage wrote (the
    parent and every compressed variant), so `dvc plots diff` compares it. So are the digits classifiers' confusion
    matrices and the detectors' precision-recall curves, from the tables their evaluate stages wrote."""
    dst, _, _ = fresh
    ids = [next(iter(plot)) for plot in yaml.safe_load((dst / "dvc.yaml").read_text())["plots"]]
    shown = json.loads(dvc("plots", "show", "--json", *ids, cwd=dst).stdout)["data"]
    for plot_id in ids:
        (rendered,) = shown[plot_id]
        rows = rendered["content"]["data"]["values"]
        content = rendered["content"]
        encoding = content.get("encoding") or content["spec"]["encoding"]   # the confusion template facets a spec
        x, y = (encoding[axis]["field"] for axis in ("x", "y"))
        if plot_id.startswith("precision-recall/"):   # each detector's curves, one per class with ground truth
            assert {x, y} == {"recall", "precision"} and rows and all(0 <= float(r[y]) <= 1 for r in rows), plot_id
            assert len(rows) == 101 * len({r["class"] for r in rows}), plot_id
        elif plot_id.startswith("confusion/"):   # each classifier's test examples, true and predicted class
            family = plot_id.removeprefix("confusion/digits-")
            assert (x, y) == ("actual", "predicted") and rows, plot_id
            assert len(rows) == metrics_of(dst, f"metrics/digits/{family}.json")["test/num_examples"], plot_id
        else:
            assert len(rows) >= 2 and all(r[x] and y in r for r in rows), plot_id
    assert sum(i.startswith("precision-recall/") for i in ids) == 3 and sum(i.startswith("confusion/") for i in ids) == 6


def test_four_tasks_report_draws_the_same_images_and_logs_its_number(fresh):
    dst, _, _ = fresh
    report = metrics_of(dst, "metrics/shapes-four-tasks/report.json")
    test_images = json.loads((dst / "artifacts/data/shapes/test/annotations.json").read_text())["images"]
    assert report["test/num_examples"] == len(test_images)  # the image-level class scored on every test image
    assert (dst / "plots/shapes-four-tasks/four_tasks.png").stat().st_size > 10_000
    (run,) = [r for r in mlflow_runs(dst / "mlflow-smoke.db") if r["experiment"] == "shapes-four-tasks"]
    assert run["metrics"]["test/dominant_shape_accuracy"] == pytest.approx(report["test/dominant_shape_accuracy"])


def test_smoke_models_learn(fresh):
    """Eight optimiser steps cannot make a classifier good, but they must make it learn: thresholds are each
    task's chance level or its own starting point, fixed by the task, not by a measured value."""
    dst, _, _ = fresh
    import pandas as pd

    curve = pd.read_csv(dst / "plots/digits/cnn/learning_curve.csv")
    assert curve["train/loss"].iloc[-1] < curve["train/loss"].iloc[0]          # the optimiser lowers its own loss
    assert metrics_of(dst, "metrics/binary-addition/rnn.json")["test/bit_accuracy"] > 0.5  # a fair coin per bit
    sine = {f: metrics_of(dst, f"metrics/timeseries-sine/{f}.json")["test/mae"] for f in ("ar", "naive")}
    assert sine["ar"] < sine["naive"]  # an AR fit averages the noise that the last value carries whole


def test_mlflow_runs_carry_tags_and_the_dvc_numbers(fresh):
    dst, _, _ = fresh
    db = dst / "mlflow-smoke.db"
    assert sqlite_ok(db)
    runs = mlflow_runs(db)
    stages = stage_table(dst)
    train_runs = {r["tags"]["dvc_stage"]: r for r in runs if r["tags"]["stage"] == "train"}
    assert set(train_runs) == {s for s in stages if s.startswith("train_")}
    for run in runs:
        assert run["status"] == "FINISHED", run
        assert run["tags"]["profile"] == "smoke" and re.fullmatch(r"[0-9a-f]{40}", run["tags"]["git_commit"])
    for run in train_runs.values():
        assert run["params"]["hardware/precision"] in ("32-true", "bf16-mixed")
    for run in (r for r in runs if r["tags"]["stage"] == "evaluate" and r["experiment"] == "timeseries-sunspots"):
        on_disk = metrics_of(dst, f"metrics/timeseries-sunspots/{run['name']}.json")
        assert run["metrics"]["test/mae"] == pytest.approx(on_disk["test/mae"])


def test_unchanged_pipeline_runs_nothing(fresh):
    dst, _, _ = fresh
    out = sh("make", "repro", "PROFILE=smoke", cwd=dst).stdout
    assert "Running stage" not in out


def test_editing_one_model_file_stales_only_its_family(fresh):
    dst, _, _ = fresh
    model = dst / "src/dlzoo/models/vae.py"
    original = model.read_text()
    try:
        model.write_text(original + "\n# an edit\n")
        stale = set(json.loads(dvc("status", "--json", "dvc.yaml", cwd=dst).stdout or "{}"))
    finally:
        model.write_text(original)
    assert stale == {"train_digits-generative-vae", "evaluate_digits-generative-vae"}


def test_one_command_variant_reruns_only_that_family(fresh):
    dst, _, _ = fresh
    # in the workspace, logging to the smoke run's store (where the hidden_size=32 run is)
    smoke_store = {"MLFLOW_TRACKING_URI": f"sqlite:///{dst / 'mlflow-smoke.db'}"}
    out = sh("dvc", "exp", "run", "-S", "conf/experiment/timeseries-sine-gru.yaml:model.net.hidden_size=8", cwd=dst,
             env={**activated_env(), **smoke_store}).stdout
    # `champions` re-reads every recipe and metrics file, so it follows any variant (seconds, no training)
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"train_timeseries-sine-gru", "evaluate_timeseries-sine-gru",
                                                                "champions"}
    hidden = [r["params"]["model.net.hidden_size"] for r in mlflow_runs(dst / "mlflow-smoke.db")
              if r["tags"]["stage"] == "train" and r["name"] == "gru" and r["experiment"] == "timeseries-sine"]
    assert sorted(hidden) == ["32", "8"]


def test_champions_are_the_best_evaluated_family_of_each_task(fresh):
    """metrics/champions.json names, per task, the family whose metrics file has the best headline number."""
    dst, _, _ = fresh
    from dlzoo.results import BASELINES, task_tables

    tasks = task_tables()
    chosen = metrics_of(dst, "metrics/champions.json")
    assert chosen and set(chosen) <= {t for t, e in tasks.items() if not e["only_profile"]}
    for task, entry in chosen.items():
        families = [f for f in tasks[task]["families"] if f not in BASELINES]
        values = {f: metrics_of(dst, f"metrics/{task}/{f}.json")[entry["metric"]] for f in families}
        best = max(values.values()) if entry["mode"] == "max" else min(values.values())
        assert entry["family"] in families and entry["value"] == values[entry["family"]] == best, task


def rest(url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call of MLflow's REST API (POST with a JSON body, or GET with query parameters)."""
    import urllib.parse
    import urllib.request

    address = f"{url}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(address, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"{}")


@contextlib.contextmanager
def make_ui(dst: Path):
    """`make ui` as the README types it, on a free loopback port; yields the address. Stopped on the way out."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["make", "--no-print-directory", "ui", f"PORT={port}", "STORE=mlflow-smoke.db"], cwd=dst,
                              env=user_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "make ui did not answer /health within 120 s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _tags(entity: dict) -> dict:
    return {t["key"]: t.get("value", "") for t in (entity.get("data", entity).get("tags") or [])}


def _runs(url: str, experiment_ids: list[str], stage: str) -> list[dict]:
    found, token = [], None
    while True:
        page = rest(url, "runs/search", {"experiment_ids": experiment_ids, "filter": f"tags.stage = '{stage}'",
                                         "max_results": 1000, **({"page_token": token} if token else {})})
        found += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return found


def test_the_store_answers_over_the_rest_api(fresh):
    """Issue 15's acceptance, through MLflow's REST API (`make ui` over the smoke run's mlflow.db, as a user opens
    it): one experiment per task; each family's train run reaches its held-out metrics (the evaluate run nested
    under it, and the registered version's tags carry the headline); every compressed variant nests under its
    family's train run and is registered with its parent named; each task's champion carries the alias."""
    dst, _, _ = fresh
    from dlzoo.results import task_tables

    stages = stage_table(dst)
    tasks = {t: e for t, e in task_tables().items() if not e["only_profile"]}
    trained = {(t, f) for t, e in tasks.items() for f in e["families"] if f"train_{t}-{f}" in stages}
    variants = set()
    for name, stage in stages.items():
        if name.startswith("compress_"):
            experiment, method = re.search(r"experiment=(\S+) compress=(\S+)", stage["cmd"]).groups()
            (family_of,) = [(t, f) for t, f in trained if f"{t}-{f}" == experiment]
            variants.add((*family_of, method))
    champions = metrics_of(dst, "metrics/champions.json")
    assert trained and variants and set(champions) == {t for t, _ in trained}

    with make_ui(dst) as url:
        experiments = {e["name"]: e["experiment_id"] for e in rest(url, "experiments/search", {"max_results": 1000})["experiments"]}
        assert {t for t, _ in trained} <= set(experiments)   # MLflow's names are unique: one experiment per task
        for task in {t for t, _ in trained}:   # the UI opens each on its runs table
            tags = _tags(rest(url, "experiments/get", experiment_id=experiments[task])["experiment"])
            assert tags.get("mlflow.experimentKind") == "custom_model_development", task
        ids = [experiments[t] for t in tasks if t in experiments]
        train_runs = {}   # (task, family) -> the family's latest train run (not a protocol's further fit)
        for run in sorted(_runs(url, ids, "train"), key=lambda r: int(r["info"]["start_time"])):
            tags = _tags(run)
            if "mlflow.parentRunId" not in tags:
                train_runs[(tags["task"], tags["family"])] = run
        assert set(train_runs) == trained

        evaluated = {}
        for run in _runs(url, ids, "evaluate"):
            evaluated.setdefault(_tags(run).get("mlflow.parentRunId"), []).append(run)
        for (task, family), run in sorted(train_runs.items()):
            metric = tasks[task]["metric"]
            on_disk = metrics_of(dst, f"metrics/{task}/{family}.json")[metric]
            children = evaluated.get(run["info"]["run_id"], [])
            assert children, f"{task}-{family}: no evaluate run nested under its latest train run"
            latest = max(children, key=lambda r: int(r["info"]["start_time"]))
            values = [m["value"] for m in latest["data"].get("metrics", []) if m["key"] == metric]
            assert values == [pytest.approx(on_disk)], (task, family, metric)
            versions = rest(url, "model-versions/search", filter=f"name='{task}-{family}'")["model_versions"]
            own = [v for v in versions if v.get("run_id") == run["info"]["run_id"]]
            assert own, f"{task}-{family}: its train run registered no version"
            assert float(_tags(own[0])[metric]) == pytest.approx(on_disk, rel=1e-5), (task, family)

        compressed = {}
        for run in _runs(url, ids, "compress"):
            tags = _tags(run)
            compressed[(tags["task"], tags["family"], tags["method"])] = tags
        assert set(compressed) == variants
        for (task, family, method), tags in sorted(compressed.items()):
            assert tags["mlflow.parentRunId"] == train_runs[(task, family)]["info"]["run_id"], (task, family, method)
            (version,) = rest(url, "model-versions/search", filter=f"name='{task}-{family}-{method}'")["model_versions"]
            assert _tags(version)["parent_model"] == f"{task}-{family}"

        for task, choice in champions.items():
            name = f"{task}-{choice['family']}"
            version = rest(url, "registered-models/alias", name=name, alias="champion")["model_version"]
            assert version["name"] == name, task
            # the task's stable address holds the same model, tagged with the family that won
            by_task = rest(url, "registered-models/alias", name=task, alias="champion")["model_version"]
            assert by_task["source"] == version["source"] and _tags(by_task)["family"] == choice["family"], task
