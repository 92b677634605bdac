"""The `champions` stage: each task's best family by its recipes' headline metric gets the registry alias
`champion`; every registered family version carries the numbers its evaluate stage wrote, as version tags and as
metrics of its MLflow 3 logged model; the alias moves when another family becomes the best; evaluate and compress
runs nest under their train run and each compressed variant is registered with its size, latency and metric."""

from __future__ import annotations

import json
import math
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF
from dlzoo.errors import ConfigError
from dlzoo.tracking.champions import champions, choose, logged_model_id


def _write(metrics_dir, task, family, **values):
    path = metrics_dir / task / f"{family}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def _store_config(uri: str, metrics_dir, out_file):
    """The champions stage's config on a test store and metrics folder, without probability wrappers."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="champions", overrides=[f"tracking.uri={uri}", f"champions.metrics_dir={metrics_dir}",
                                                          f"champions.out_file={out_file}", "~champions.probabilities",
                                                          "~champions.actions"])
    GlobalHydra.instance().clear()
    return cfg


def _stage_config():
    """The champions stage's own config (the working directory's store, metrics and answer wrappers)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="champions")
    GlobalHydra.instance().clear()
    return cfg


def test_choose_follows_each_tasks_direction_and_skips_what_is_missing(tmp_path):
    _write(tmp_path, "digits", "cnn", **{"test/accuracy": 0.98})
    _write(tmp_path, "digits", "densenet", **{"test/accuracy": 0.99})
    _write(tmp_path, "digits", "mobilenet", **{"test/accuracy": 0.99})      # a tie: the first name wins
    _write(tmp_path, "timeseries-sine", "gru", **{"test/mae": 0.2})
    _write(tmp_path, "timeseries-sine", "lstm", **{"test/mae": 0.1})
    _write(tmp_path, "timeseries-sine", "rnn", **{"test/mae": math.nan})     # not a number: not a candidate
    tasks = {"digits": {"metric": "test/accuracy", "mode": "max", "families": ["mobilenet", "cnn", "densenet", "vgg"]},
             "timeseries-sine": {"metric": "test/mae", "mode": "min", "families": ["rnn", "gru", "lstm"]},
             "go-5x5": {"metric": "test/win_rate_vs_mcts", "mode": "max", "families": ["alphago-zero"]}}
    chosen = choose(tasks, tmp_path)
    assert chosen["digits"]["family"] == "densenet" and chosen["digits"]["families"] == {
        "cnn": 0.98, "densenet": 0.99, "mobilenet": 0.99}
    assert chosen["digits"]["runner_up"] == "mobilenet" and chosen["digits"]["runner_up_value"] == 0.99
    assert chosen["timeseries-sine"]["family"] == "lstm" and "rnn" not in chosen["timeseries-sine"]["families"]
    assert chosen["timeseries-sine"]["runner_up"] == "gru"
    assert "go-5x5" not in chosen  # no metrics file: nothing to choose


def _train_and_evaluate(experiment_id: str, family: str, metric: str, value: float) -> str:
    """A train run that registers `digits-<family>` and an evaluate run naming it (as the stages write them)."""
    import mlflow
    import torch

    with mlflow.start_run(experiment_id=experiment_id, run_name=family, tags={"stage": "train", "family": family}) as r:
        mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 registered_model_name=f"digits-{family}", pip_requirements=["torch"])
    _evaluate(experiment_id, family, r.info.run_id, metric, value)
    return r.info.run_id


def _evaluate(experiment_id: str, family: str, train_run_id: str, metric: str, value: float) -> None:
    import mlflow

    time.sleep(0.005)   # distinct start times: the newest evaluate run comes first
    with mlflow.start_run(experiment_id=experiment_id, run_name=family,
                          tags={"stage": "evaluate", "family": family, "train_run_id": train_run_id}):
        mlflow.log_metric(metric, value)


def test_champion_alias_and_version_metrics_in_the_store(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient(uri).create_experiment("digits")
    runs = {family: _train_and_evaluate(experiment_id, family, "test/accuracy", value)
            for family, value in (("cnn", 0.99), ("mobilenet", 0.98))}
    metrics = tmp_path / "metrics"
    _write(metrics, "digits", "cnn", **{"test/accuracy": 0.99, "latency_ms_b1": 0.3, "test/loss": 0.05})
    _write(metrics, "digits", "mobilenet", **{"test/accuracy": 0.98, "latency_ms_b1": 0.4})
    _write(metrics, "digits", "densenet", **{"test/accuracy": 0.5})   # evaluated, but trained on another machine
    # the trained versions themselves carry the alias here (probability wrappers: the serving test below)
    cfg = _store_config(uri, metrics, tmp_path / "champions.json")

    out = champions(cfg)
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("digits-cnn", "champion").version) == "1"
    assert sorted(out["published"]) == ["digits", "digits-cnn", "digits-mobilenet"]
    assert "digits-densenet" in out["missing"]  # a family whose model is not in this store is named, not fatal
    assert json.loads((tmp_path / "champions.json").read_text())["digits"] == {
        "family": "cnn", "metric": "test/accuracy", "mode": "max", "value": 0.99, "runner_up": "mobilenet",
        "runner_up_value": 0.98}
    version = client.get_model_version("digits-mobilenet", "1")
    assert version.tags["test/accuracy"] == "0.98" and version.tags["metrics_file"] == "metrics/digits/mobilenet.json"
    logged = client.get_logged_model(logged_model_id(version))
    assert {m.key: m.value for m in logged.metrics}["test/accuracy"] == pytest.approx(0.98)
    # the task's own address: a copy of the champion's version, tagged with its family and numbers
    task_champion = client.get_model_version_by_alias("digits", "champion")
    cnn = client.get_model_version("digits-cnn", "1")
    assert task_champion.source == cnn.source and task_champion.run_id == runs["cnn"]
    assert {k: task_champion.tags[k] for k in ("family", "test/accuracy", "dlzoo.source_model")} == {
        "family": "cnn", "test/accuracy": "0.99", "dlzoo.source_model": "digits-cnn/1"}

    # mobilenet re-evaluated and now the better one: the alias moves; cnn's unchanged number is not logged twice
    _write(metrics, "digits", "mobilenet", **{"test/accuracy": 0.995, "latency_ms_b1": 0.4})
    _evaluate(experiment_id, "mobilenet", runs["mobilenet"], "test/accuracy", 0.995)
    champions(cfg)
    assert str(client.get_model_version_by_alias("digits-mobilenet", "champion").version) == "1"
    assert "champion" not in client.get_registered_model("digits-cnn").aliases
    assert client.get_model_version_by_alias("digits", "champion").tags["family"] == "mobilenet"
    cnn = client.get_model_version("digits-cnn", "1")
    assert [m.value for m in client.get_metric_history(cnn.run_id, "test/accuracy")] == [0.99]
    mobilenet = client.get_model_version("digits-mobilenet", "1")
    assert [m.value for m in client.get_metric_history(mobilenet.run_id, "test/accuracy")] == [0.98, 0.995]
    assert mobilenet.tags["test/accuracy"] == "0.995"
    champions(cfg)   # again: the task model gains no version
    assert len(client.search_model_versions("name='digits'")) == 2


def test_the_alias_stays_on_the_measured_version_when_a_newer_one_is_registered(tmp_path, monkeypatch):
    """A version registered by hand (or by a smoke run in the same store) after the evaluation is newer, but it is
    not what the metrics file measured: neither the family's nor the task's alias goes to it."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("digits")
    _train_and_evaluate(experiment_id, "cnn", "test/accuracy", 0.99)
    metrics = tmp_path / "metrics"
    _write(metrics, "digits", "cnn", **{"test/accuracy": 0.99})
    cfg = _store_config(uri, metrics, tmp_path / "champions.json")
    champions(cfg)
    before = client.get_model_version_by_alias("digits", "champion")

    with mlflow.start_run(experiment_id=experiment_id, run_name="by-hand"):
        mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 registered_model_name="digits-cnn", pip_requirements=["torch"])
    # and an evaluate run of it with another number: it did not write the metrics file
    (hand,) = [v for v in client.search_model_versions("name='digits-cnn'") if str(v.version) == "2"]
    _evaluate(experiment_id, "cnn", hand.run_id, "test/accuracy", 0.5)
    champions(cfg)
    assert str(client.get_model_version_by_alias("digits-cnn", "champion").version) == "1"
    after = client.get_model_version_by_alias("digits", "champion")
    assert after.version == before.version and after.tags["dlzoo.source_model"] == "digits-cnn/1"


def test_a_family_with_no_evaluate_run_in_the_store_moves_no_alias(tmp_path, monkeypatch):
    import mlflow
    import torch
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient(uri).create_experiment("digits")
    with mlflow.start_run(experiment_id=experiment_id, run_name="cnn"):   # registered, never evaluated here
        mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 registered_model_name="digits-cnn", pip_requirements=["torch"])
    metrics = tmp_path / "metrics"
    _write(metrics, "digits", "cnn", **{"test/accuracy": 0.99})
    out = champions(_store_config(uri, metrics, tmp_path / "champions.json"))
    assert out["missing"] == ["digits-cnn"] and out["published"] == []
    assert "champion" not in MlflowClient(uri).get_registered_model("digits-cnn").aliases


def test_evaluate_and_compress_runs_nest_under_their_train_run_and_variants_are_registered(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("digits")

    def run(stage, **tags):
        time.sleep(0.005)   # distinct start times: the newest compress run is the registered one
        with mlflow.start_run(experiment_id=experiment_id, tags={"stage": stage, "task": "digits", **tags}) as r:
            return r.info.run_id

    train_id = run("train", family="cnn")
    evaluate_id = run("evaluate", family="cnn", train_run_id=train_id)
    stray_id = run("evaluate", family="cnn", train_run_id="0" * 32)   # its train run is in another store
    old_id = run("compress", family="cnn", method="static-int8", parent_run_id=train_id)
    compress_id = run("compress", family="cnn", method="static-int8", parent_run_id=train_id)
    gone_id = run("compress", family="cnn", method="retired-method", parent_run_id=train_id)  # no metrics file
    metrics = tmp_path / "metrics"
    _write(metrics, "digits", "cnn", **{"test/accuracy": 0.99})
    _write(metrics, "digits", "cnn-static-int8", **{"test/accuracy": 0.985, "size_mb": 0.3, "latency_ms_b32": 1.25,
                                                     "num_params": 278890.0, "speedup_b1": 1.7})
    cfg = _store_config(uri, metrics, tmp_path / "champions.json")

    out = champions(cfg)
    parent = {r: client.get_run(r).data.tags.get("mlflow.parentRunId") for r in (evaluate_id, stray_id, old_id,
                                                                               compress_id, gone_id, train_id)}
    assert parent == {evaluate_id: train_id, stray_id: None, old_id: train_id, compress_id: train_id,
                      gone_id: train_id, train_id: None}
    assert out["lineage"]["variants"] == ["digits-cnn-static-int8"]
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (version,) = client.search_model_versions("name='digits-cnn-static-int8'")
    assert version.run_id == compress_id and version.source == f"runs:/{compress_id}/compressed"   # the latest run
    assert {k: version.tags[k] for k in ("test/accuracy", "size_mb", "latency_ms_b32", "num_params", "speedup_b1",
                                          "method", "parent_model", "parent_run_id")} == {
        "test/accuracy": "0.985", "size_mb": "0.3", "latency_ms_b32": "1.25", "num_params": "278890",
        "speedup_b1": "1.7", "method": "static-int8", "parent_model": "digits-cnn", "parent_run_id": train_id}
    assert not client.search_registered_models("name='digits-cnn-retired-method'")

    champions(cfg)   # again: nothing new
    assert len(client.search_model_versions("name='digits-cnn-static-int8'")) == 1
    newer_id = run("compress", family="cnn", method="static-int8", parent_run_id=train_id)   # the stage re-ran
    champions(cfg)
    versions = {v.run_id: str(v.version) for v in client.search_model_versions("name='digits-cnn-static-int8'")}
    assert versions == {compress_id: "1", newer_id: "2"}


def test_the_digits_champion_is_served_offline_as_class_probabilities(workdir, make_cfg):
    """`make serve TASK=digits` (models:/digits@champion) from a shell with nothing activated answers test images
    with one probability per class name: the softmax of the logits the trained version (torch.export) gives.
    The champion is a wrapper version made once: re-running the stage adds none."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from conftest import prepare_data, served
    from dlzoo.config import build
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.training.train import train

    cfg = make_cfg("experiment=digits-cnn", "profile=smoke", "tracking.log_model=true", "tracking.register_model=true")
    prepare_data(cfg)
    train(cfg)
    evaluate(cfg)
    champions_cfg = _stage_config()
    champions(champions_cfg)
    champions(champions_cfg)  # again: the same wrapper, no new version
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert json.loads((workdir / "metrics/champions.json").read_text())["digits"]["family"] == "cnn"
    client = MlflowClient(uri)
    versions = {str(v.version): v.tags for v in client.search_model_versions("name='digits-cnn'")}
    champion = client.get_model_version_by_alias("digits-cnn", "champion")
    assert sorted(versions, key=int) == ["1", "2"] and str(champion.version) == "2"
    assert champion.tags["dlzoo.wraps_version"] == "1" and "dlzoo.wraps_version" not in versions["1"]
    assert champion.tags["test/accuracy"] == versions["1"]["test/accuracy"]  # the numbers on both versions
    package = client.get_run(champion.run_id).data.tags   # the wrapper's run carries the standard tags too
    assert {k: package[k] for k in ("task", "family", "profile", "stage")} == {
        "task": "digits", "family": "cnn", "profile": "smoke", "stage": "package"}
    assert len(package["git_commit"]) in (40, len("unknown")) and package["dvc_stage"]

    datamodule = build(cfg.data.module, "data.module")
    datamodule.setup("test")
    images, _ = next(iter(datamodule.test_dataloader()))
    images = images[:4]
    mlflow.set_tracking_uri(uri)
    logits = torch.from_numpy(mlflow.pytorch.load_model("models:/digits-cnn/1")(images).detach().numpy())
    expected = torch.softmax(logits.double(), dim=1)
    in_process = mlflow.pyfunc.load_model("models:/digits-cnn@champion").predict(images.numpy())
    assert list(in_process.columns) == [str(d) for d in range(10)]
    assert torch.allclose(torch.tensor(in_process.to_numpy()), expected, atol=1e-6)
    assert client.get_model_version_by_alias("digits", "champion").source == champion.source
    with served("models:/digits@champion", uri, workdir) as post:
        answer = post(images.numpy().tolist())
    assert len(answer) == 4 and all(list(row) == [str(d) for d in range(10)] for row in answer)
    probabilities = torch.tensor([[row[str(d)] for d in range(10)] for row in answer], dtype=torch.float64)
    assert torch.allclose(probabilities.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(probabilities, expected, atol=1e-6)


def test_probabilities_for_an_unknown_task_is_one_line_and_writes_nothing(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="champions", overrides=[f"champions.out_file={tmp_path / 'champions.json'}",
                                                          "+champions.probabilities.digitz=[a,b]"])
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError) as info:
        champions(cfg)
    assert str(info.value) == "champions.probabilities names tasks no recipe has: digitz"
    assert not (tmp_path / "champions.json").exists()


def test_the_cartpole_champion_is_served_as_its_greedy_action(workdir, make_cfg):
    """`make serve TASK=control-cartpole` answers observations with the action the evaluate stage would take (the
    argmax of the trained network's scores) and its name; a request of the wrong shape is refused with 400."""
    import urllib.error
    import urllib.request

    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from conftest import served
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.training.train import train

    cfg = make_cfg("experiment=control-cartpole-dqn", "profile=smoke", "runner.total_steps=1200",
                   "runner.eval_every_steps=600", "runner.val_episodes=2", "evaluator.episodes=3",
                   "runner.learning_starts=200", "runner.train_frequency=64", "runner.gradient_steps=8",
                   "tracking.log_model=true", "tracking.register_model=true")
    train(cfg)
    evaluate(cfg)
    champions_cfg = _stage_config()
    champions(champions_cfg)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("control-cartpole", "champion")
    assert champion.tags["family"] == "dqn" and champion.tags["dlzoo.source_model"] == "control-cartpole-dqn/2"

    observations = np.random.default_rng(0).normal(scale=[1.0, 1.0, 0.1, 1.0], size=(16, 4)).astype(np.float32)
    mlflow.set_tracking_uri(uri)
    network = mlflow.pytorch.load_model("models:/control-cartpole-dqn/1")
    expected = [int(network(torch.from_numpy(obs[None])).argmax(-1)) for obs in observations]
    with served("models:/control-cartpole@champion", uri, workdir) as post:
        answer = post(observations.tolist())
        with pytest.raises(urllib.error.HTTPError) as refused:
            post([[0.1, 0.2]])   # CartPole observes 4 numbers
    assert [row["action"] for row in answer] == expected
    assert {row["name"] for row in answer} <= {"push left", "push right"}
    assert refused.value.code == 400


def test_the_forecaster_champion_answers_raw_values_in_the_series_units(workdir, make_cfg):
    """`make serve TASK=timeseries-sine` takes windows of raw values and answers the next value(s) in the series'
    units: the trained network's forecast on the standardised window, taken back; `steps` feeds forecasts back."""
    import urllib.error
    import urllib.request

    import mlflow
    import numpy as np
    import torch

    from conftest import prepare_data, served
    from dlzoo.config import build
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.training.train import train

    cfg = make_cfg("experiment=timeseries-sine-rnn", "profile=smoke", "tracking.log_model=true",
                   "tracking.register_model=true")
    prepare_data(cfg)
    train(cfg)
    evaluate(cfg)
    champions_cfg = _stage_config()
    champions(champions_cfg)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"

    module = build(cfg.data.module, "data.module")
    module.setup("fit")
    windows = module.values[-3 * module.window:].reshape(3, module.window)   # raw values, as a user has them
    mlflow.set_tracking_uri(uri)
    network = mlflow.pytorch.load_model("models:/timeseries-sine-rnn/1")

    def one_step(history):
        z = torch.tensor((np.asarray(history[-module.window:]) - module.mean) / module.std, dtype=torch.float32)
        return float(network(z.reshape(1, -1, 1)).reshape(-1)[0]) * module.std + module.mean

    expected = [[one_step(list(w))] for w in windows]
    history = list(windows[0])
    for _ in range(3):
        history.append(one_step(history))
    with served("models:/timeseries-sine@champion", uri, workdir) as post:
        answer = post(windows.tolist())
        url = post.url
        request = urllib.request.Request(url, method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"inputs": windows[:1].tolist(), "params": {"steps": 3}}).encode())
        three = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            post([[0.1, 0.2, 0.3]])   # a window of 3 values, where the recipe's is longer
    assert np.allclose(answer, expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(three, [history[-3:]], rtol=1e-4, atol=1e-5)
    assert refused.value.code == 400
