"""The stage table and the lock are evidence: dvc.yaml is what the recipes generate, each stage depends on
the code it imports and nothing it does not, the layers import in one direction, and every dependency
recorded in dvc.lock is the file in the tree (results come from running stages, never from `dvc commit`)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from dlzoo import stages as stage_table

LAYERS = ["data", "models", "training", "evaluation", "compression"]
# What each layer may import (the direction data -> models -> training / evaluation -> compression).
ALLOWED = {
    "data": set(),
    "models": set(),
    "training": {"data", "models"},
    "evaluation": {"data", "models"},
    "compression": {"data", "models", "training", "evaluation"},
}


@pytest.fixture(scope="module")
def tables() -> dict:
    return stage_table.build_tables()


@pytest.fixture(scope="module")
def generated(tables) -> dict:
    return {name: stage for table in tables.values() for name, stage in table.items()}


@pytest.fixture(scope="module")
def committed() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _pipeline_files() -> list[str]:
    return ["dvc.yaml"] + sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("profiles/*/dvc.yaml"))


def test_dvc_yaml_is_generated_from_the_recipes(tables):
    assert sorted(tables) == _pipeline_files(), "a pipeline file is missing or left over: run `make stages`"
    for pipeline, stages in tables.items():
        assert (REPO / pipeline).read_text() == stage_table.render(stages, pipeline), f"{pipeline} is stale: run `make stages`"


def test_one_profile_recipes_live_in_their_own_pipeline(tables):
    """LunarLander (`only_profile: full`) is in profiles/full/dvc.yaml only, pinned to profile=full: plain
    `dvc repro` (the cpu pipeline) never reaches it, and params.yaml's profile does not stale it."""
    full = tables["profiles/full/dvc.yaml"]
    assert not any("lunarlander" in name for name in tables["dvc.yaml"])
    assert {"train_control-lunarlander-ppo", "evaluate_control-lunarlander-ppo"} <= set(full)
    for name, stage in full.items():
        assert stage["wdir"] == "../.." and "profile=full" in stage["cmd"] and "${profile}" not in stage["cmd"]
        assert "profile" not in stage["params"] and "conf/profile/full.yaml" in stage["deps"]
        assert not any(d.startswith("conf/scale/smoke/") or "${profile}" in d for d in stage["deps"]), name
    assert stage_table.render(full, "profiles/full/dvc.yaml").count("- ../../params.yaml") == 1
    # pinning: the profile named, its config files only, from the root
    pinned = stage_table.pin_profile({"cmd": "python pipelines/evaluate.py experiment=x profile=${profile}",
                                      "params": ["profile"], "deps": ["conf/profile/${profile}.yaml",
                                      "conf/scale/full/x.yaml", "conf/scale/smoke/x.yaml"], "outs": ["o"]}, "full")
    assert pinned == {"cmd": "python pipelines/evaluate.py experiment=x profile=full", "wdir": "../..", "params": [],
                      "deps": ["conf/profile/full.yaml", "conf/scale/full/x.yaml"], "outs": ["o"]}


def test_every_recipe_has_its_stages(generated):
    for name in stage_table.recipe_names():
        if name.endswith("-baselines"):
            assert f"baselines_{name}" in generated
        else:
            assert {f"train_{name}", f"evaluate_{name}"} <= set(generated)


def test_the_launcher_param_reaches_the_resumable_train_stages(generated):
    """`launcher` (params.yaml) picks the Hydra launcher of exactly the train stages whose recipe is on the
    resumable runner (a pre-empted cluster job continues there), with the launcher's code as a dependency."""
    from conftest import compose_config

    for name in stage_table.recipe_names():
        stage = generated.get(f"train_{name}")
        if stage is None:
            continue
        resumable = compose_config(f"experiment={name}").runner._target_ in stage_table.RESUMABLE_RUNNERS
        assert ("+launcher=${launcher}" in stage["cmd"]) == resumable, name
        assert ("launcher" in stage["params"]) == resumable and ("src/dlzoo/cluster.py" in stage["deps"]) == resumable, name
    assert "+launcher=${launcher}" in generated["train_digits-cnn"]["cmd"]


def test_import_closure_follows_lazy_and_package_imports(tmp_path):
    """A function-level import is a dependency, and importing a.b.c runs a/__init__ and a/b/__init__."""
    deps = {str(p.relative_to(REPO)) for p in stage_table.import_closure([REPO / "pipelines/train.py"], ["dlzoo.training.supervised"])}
    assert {"src/dlzoo/__init__.py", "src/dlzoo/training/__init__.py", "src/dlzoo/training/callbacks.py",
            "src/dlzoo/checkpoints.py", "src/dlzoo/cli.py"} <= deps
    assert not any("/compression/" in d or "/evaluation/" in d for d in deps)


def test_one_model_file_is_a_dependency_of_its_family_only(committed):
    """Editing the VAE retrains the VAE and nothing else; editing the Transformer touches its train, evaluate
    and compress stages (their report depends on their outputs), never another task's."""
    def dependants(path: str) -> set[str]:
        return {name for name, stage in committed["stages"].items() if path in stage.get("deps", [])}

    assert dependants("src/dlzoo/models/vae.py") == {"train_digits-generative-vae", "evaluate_digits-generative-vae"}
    transformer = dependants("src/dlzoo/models/transformer.py")
    assert {"train_translation-en-ja-transformer", "evaluate_translation-en-ja-transformer"} <= transformer
    assert all("translation-en-ja" in name for name in transformer)
    assert "train_translation-en-ja-transformer" not in dependants("src/dlzoo/models/cnn.py")


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_in_one_direction(layer):
    for path in sorted((REPO / "src/dlzoo" / layer).glob("*.py")):
        for name in stage_table.direct_imports(path):
            parts = name.split(".")
            other = parts[1] if len(parts) > 1 else None
            if other in LAYERS and other != layer:
                assert other in ALLOWED[layer], f"{path.relative_to(REPO)} imports {name}: {layer} may not import {other}"


def _git_tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


@pytest.mark.parametrize("pipeline", _pipeline_files())
def test_lock_records_the_tree(pipeline):
    """Every code/config dependency recorded in a pipeline's lock has the md5 of the file in the tree, each
    locked stage has the deps, command and params its dvc.yaml gives it now. Stages without a lock entry have
    not run yet. (Paths are the repository's: a profile's stages run from the root, `wdir: ../..`.)"""
    lock_file = REPO / pipeline.replace("dvc.yaml", "dvc.lock")
    lock = yaml.safe_load(lock_file.read_text())["stages"] if lock_file.is_file() else {}
    committed = yaml.safe_load((REPO / pipeline).read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tracked = _git_tracked()
    problems = []
    for name, entry in lock.items():
        stage = committed["stages"].get(name)
        if stage is None:
            problems.append(f"{name}: locked but not in dvc.yaml")
            continue
        want_deps = {d.replace("${profile}", params["profile"]) for d in stage["deps"]}
        got_deps = {d["path"] for d in entry.get("deps", [])}
        if want_deps != got_deps:
            problems.append(f"{name}: deps differ from dvc.yaml ({sorted(want_deps ^ got_deps)[:5]})")
        cmd = stage["cmd"]
        for key in ("profile", "trainer", "launcher"):  # the params.yaml values dvc.yaml interpolates
            cmd = cmd.replace(f"${{{key}}}", str(params[key]))
        if entry.get("cmd") != cmd:
            problems.append(f"{name}: command differs ({entry.get('cmd')!r} vs {cmd!r})")
        for key, value in entry.get("params", {}).get("params.yaml", {}).items():
            if params.get(key) != value:
                problems.append(f"{name}: param {key}={value} in the lock, {params.get(key)} in params.yaml")
        for dep in entry.get("deps", []):
            if dep["path"] in tracked and "md5" in dep:
                if hashlib.md5((REPO / dep["path"]).read_bytes()).hexdigest() != dep["md5"]:
                    problems.append(f"{name}: {dep['path']} changed since the stage ran")
    assert not problems, "dvc.lock is not the tree's (re-run these stages):\n" + "\n".join(problems)


def test_readme_results_are_the_metrics_files():
    """The README's summary and every task page's table are what `make results` generates from metrics/: no retyped
    numbers, and a page for every task and every metrics folder."""
    from dlzoo import results

    blocks = results.pages()
    tasks = {p.name for p in (REPO / "metrics").iterdir() if p.is_dir()} | set(results.task_tables())
    assert {REPO / "README.md"} | {REPO / "docs" / "tasks" / f"{t}.md" for t in tasks} == set(blocks)
    stale = [str(path.relative_to(REPO)) for path, block in blocks.items()
             if not results.update(path, block, check=True)]
    assert not stale, f"results tables are stale in {stale}: run `make results`"


def test_every_compression_report_is_a_dvc_plot(generated):
    """dvc.yaml's top-level plots: one size-against-headline scatter per compress-report stage, on its table, and
    one latency-against-headline scatter for each task whose recipe declares its latency (`results.latency`)."""
    from dlzoo.results import task_tables

    plots = [p for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
             if next(iter(p)).startswith(("compression/", "compression-latency/"))]
    reports = {name.split("_", 1)[1]: stage for name, stage in generated.items() if name.startswith("compress-report_")}
    tables = task_tables()
    ids = [next(iter(p)) for p in plots]
    assert {i.removeprefix("compression/") for i in ids if i.startswith("compression/")} == set(reports)
    assert {i.removeprefix("compression-latency/") for i in ids if i.startswith("compression-latency/")} == {
        t for t in reports if tables[t].get("latency")} >= {"digits", "translation-en-ja"}
    for plot in plots:
        (plot_id, spec), = plot.items()
        kind, task = plot_id.split("/")
        (table, metric), = spec["y"].items()
        assert table == f"{reports[task]['outs'][0]}/compression.csv"
        assert metric == tables[task]["metric"] and metric.startswith("test/")
        assert spec["x"] == ("size_mb" if kind == "compression" else tables[task]["latency"])


def test_evaluation_tables_are_dvc_plots(generated, tmp_path):
    """A top-level plot per classifier (confusion matrix) and per detector (precision-recall per class) on the table
    its evaluate stage writes into its report folder; both templates render with `dvc plots show`."""
    from dlzoo.evaluation.classification import CONFUSION_TABLE
    from dlzoo.evaluation.detection import PR_CURVE

    plots = dict(next(iter(p.items())) for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"])
    evaluated = {n.split("_", 1)[1] for n in generated if n.startswith("evaluate_")}
    for kind, table, expected in (
            ("confusion", CONFUSION_TABLE, {f"digits-{f}" for f in ("cnn", "cnn-groupnorm", "cnn-instancenorm",
                                                                    "cnn-layernorm", "densenet", "mobilenet")}),
            ("precision-recall", PR_CURVE, {f"detection-shapes-{f}" for f in ("ssd", "yolo-anchor-free", "yolov3")})):
        assert {k.removeprefix(f"{kind}/") for k in plots if k.startswith(f"{kind}/")} == expected <= evaluated
        for experiment in expected:
            (path, _), = plots[f"{kind}/{experiment}"]["y"].items()
            assert path == f"{generated[f'evaluate_{experiment}']['outs'][0]}/{table}"
    # both templates render: a bare DVC repository with the two plots on small tables
    (tmp_path / ".dvc/plots").mkdir(parents=True)
    (tmp_path / ".dvc/plots/precision_recall.json").write_bytes((REPO / ".dvc/plots/precision_recall.json").read_bytes())
    (tmp_path / ".dvc/config").write_text("[core]\n    no_scm = true\n")
    (tmp_path / "pr.csv").write_text("class,recall,precision\n" + "".join(
        f"{c},{r / 100},{p}\n" for c, p in (("circle", 1.0), ("square", 0.5)) for r in range(101)))
    (tmp_path / "confusion.csv").write_text("actual,predicted\n0,0\n0,1\n1,1\n")
    specs = {"pr": {**plots["precision-recall/detection-shapes-ssd"], "y": {"pr.csv": "precision"}},
             "confusion": {**plots["confusion/digits-cnn"], "y": {"confusion.csv": "predicted"}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{k: v} for k, v in specs.items()]}))
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    data = json.loads(shown.stdout)["data"]
    (pr,), (confusion,) = data["pr"], data["confusion"]
    assert pr["content"]["encoding"]["color"]["field"] == "class" and pr["content"]["encoding"]["x"]["field"] == "recall"
    rows = pr["content"]["data"]["values"]
    assert len(rows) == 202 and {r["class"] for r in rows} == {"circle", "square"}
    assert len(confusion["content"]["data"]["values"]) == 3
    assert {confusion["content"]["spec"]["encoding"][a]["field"] for a in ("x", "y")} == {"actual", "predicted"}
