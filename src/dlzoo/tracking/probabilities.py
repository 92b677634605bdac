"""Champions that answer what a user asks for, not what the network outputs.

The train stage registers a network bare (a `torch.export` program: inputs in, raw scores out), the exact form
the evaluate stage measured. For the tasks named in `conf/champions.yaml`, the champions stage registers one more
version of the champion's model `<task>-<family>`: an `mlflow.pyfunc` model that holds the trained version's files
and turns the scores into an answer. It is tagged `dlzoo.wraps_version` (the trained version it holds) and carries
the alias `champion`; the trained versions keep answering raw scores.

- `probabilities` (classifiers): softmax over the logits, one column per class name;
- `actions` (reinforcement-learning policies): the greedy action, the argmax of the policy's logits or the
  Q-network's values (as the evaluate stage acts), with its name;
- `forecasts` (time series): the next values for a window of raw values (`params: {"steps": k}` for k of them);
- `texts` (translators): sentences in, translations out (`params: {"beam": k}`), from the TorchScript translator
  the evaluate stage exported and logged for that trained version (dlzoo.serving.TranslatorModel);
- `detections`, `instances`, `masks`, `moves`, `clips`: boxes, instance masks, a segmentation mask, a Go move, a
  generated clip (dlzoo.tracking.structured), with the train run's config beside the network.

    mlflow models serve -m models:/digits@champion --env-manager local
    # {"inputs": [[[[...8x8 image...]]]]} -> {"predictions": [{"0": 0.001, ..., "9": 0.97}, ...]}
    mlflow models serve -m models:/control-cartpole@champion --env-manager local
    # {"inputs": [[0.01, -0.2, 0.03, 0.1]]} -> {"predictions": [{"action": 1, "name": "push right"}]}
    mlflow models serve -m models:/timeseries-sunspots@champion --env-manager local
    # {"inputs": [[...20 yearly means...]], "params": {"steps": 3}} -> {"predictions": [[71.2, 98.5, 120.3]]}
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version as installed_version

import mlflow

from dlzoo.tracking.requirements import PACKAGE_DIR  # src/dlzoo, shipped as code_paths: the pickled wrapper's class

WRAPS = "dlzoo.wraps_version"
# what load_context and predict import (the wrapped network itself needs only torch)
REQUIREMENTS = ("torch", "numpy", "pandas")


class ClassProbabilities(mlflow.pyfunc.PythonModel):
    """softmax over the wrapped network's last dimension, as a DataFrame with one column per class name."""

    def load_context(self, context) -> None:
        import mlflow.pytorch

        self.net = mlflow.pytorch.load_model(context.artifacts["network"])
        self.classes = [str(c) for c in context.model_config["classes"]]

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(model_input))
        with torch.no_grad():
            logits = self.net(inputs)
        if logits.shape[-1] != len(self.classes):
            raise ValueError(f"the network gives {logits.shape[-1]} scores per input, the model names "
                             f"{len(self.classes)} classes")
        return pd.DataFrame(torch.softmax(logits.double(), dim=-1).numpy(), columns=self.classes)


class GreedyActions(mlflow.pyfunc.PythonModel):
    """argmax over the wrapped network's last dimension, as a DataFrame of action index and name."""

    def load_context(self, context) -> None:
        import mlflow.pytorch

        self.net = mlflow.pytorch.load_model(context.artifacts["network"])
        self.actions = [str(a) for a in context.model_config["actions"]]

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))
        # one observation at a time: an agent acts on one, and its exported graph was traced on a batch of one
        with torch.no_grad():
            scores = torch.cat([self.net(obs[None]) for obs in inputs])
        if scores.shape[-1] != len(self.actions):
            raise ValueError(f"the network scores {scores.shape[-1]} actions, the model names {len(self.actions)}")
        chosen = scores.argmax(-1).numpy().astype(np.int64)
        return pd.DataFrame({"action": chosen, "name": [self.actions[i] for i in chosen]})


class NextValues(mlflow.pyfunc.PythonModel):
    """A window of the series' raw values in, the next values out, in the series' units: the window standardised
    with the training part's mean and standard deviation (as the data module does), the network's one-step
    forecast taken back to raw units, and for `steps` > 1 each forecast fed back as the newest value."""

    def load_context(self, context) -> None:
        import mlflow.pytorch

        self.net = mlflow.pytorch.load_model(context.artifacts["network"])
        config = context.model_config
        self.window, self.mean, self.std = int(config["window"]), float(config["mean"]), float(config["std"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        steps = int((params or {}).get("steps", 1))
        windows = np.asarray(model_input, dtype=np.float64)
        if windows.ndim != 2 or windows.shape[1] != self.window or not 1 <= steps <= 1000:
            raise MlflowException(f"expected windows of {self.window} values each and 1 <= steps <= 1000, got shape "
                                  f"{list(windows.shape)} and steps={steps}", error_code=INVALID_PARAMETER_VALUE)
        forecasts = []
        for row in windows:
            history = list((row - self.mean) / self.std)
            ahead = []
            with torch.no_grad():
                for _ in range(steps):
                    x = torch.tensor(history[-self.window:], dtype=torch.float32).reshape(1, self.window, 1)
                    ahead.append(float(self.net(x).reshape(-1)[0]))
                    history.append(ahead[-1])
            forecasts.append([z * self.std + self.mean for z in ahead])
        return np.asarray(forecasts)


def _translator_model():
    from dlzoo.serving import TranslatorModel  # the tokenisers it needs load only for a translation champion

    return TranslatorModel()


STRUCTURED = ("detections", "instances", "masks", "moves", "clips")


def _structured(kind: str):
    def make():
        from dlzoo.tracking.structured import KINDS

        return KINDS[kind]()

    return make


# answer kind -> the pyfunc model that gives it (the structured kinds: dlzoo.tracking.structured)
ANSWERS = {"probabilities": ClassProbabilities, "actions": GreedyActions, "forecasts": NextValues,
           "texts": _translator_model, **{k: _structured(k) for k in STRUCTURED}}
# what the structured kinds' code imports besides REQUIREMENTS (the playground's model side, dlzoo.demo)
STRUCTURED_REQUIREMENTS = ("omegaconf", "pillow", "torchvision", "pycocotools", "open_spiel", "sgfmill", "soundfile",
                           "scipy", "matplotlib", "lightning")


def answer_signature(kind: str, trained_signature, config: dict):
    """The answer version's signature: the trained version's inputs (raw windows for forecasts) and the answer."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = trained_signature.inputs if trained_signature else None
    if kind in STRUCTURED:
        from dlzoo.tracking.structured import signature

        return signature(kind)
    if kind == "texts":
        from dlzoo.serving import text_signature

        return text_signature(int(config.get("beam", 1)))
    if kind == "probabilities":
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", c) for c in config["classes"]]))
    if kind == "actions":
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("long", "action"), ColSpec("string", "name")]))
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, int(config["window"])))]),
                          outputs=Schema([TensorSpec(np.dtype("float64"), (-1, -1))]),
                          params=ParamSchema([ParamSpec("steps", "long", 1)]))


def trained_versions(versions: list) -> list:
    """The versions the train stages registered (not the probability wrappers this module adds)."""
    return [v for v in versions if WRAPS not in (v.tags or {})]


def package_tags(client, trained, source: str) -> dict[str, str]:
    """The package run's tags: the standard ones (task, family, profile from the trained version's train run; this
    commit and stage), `stage=package` and the wrapped version's URI."""
    import os

    from dlzoo.tracking.mlflow_tracking import git_commit

    trained_tags = client.get_run(trained.run_id).data.tags if trained.run_id else {}
    tags = {k: trained_tags[k] for k in ("task", "family", "profile") if k in trained_tags}
    return {**tags, "stage": "package", "source": source, "git_commit": git_commit(),
            "dvc_stage": os.environ.get("DVC_STAGE", "champions (outside dvc)")}


def exported_translator(client, trained, dst: str) -> str:
    """The translator.pt that the newest finished evaluate run of `trained` (its train run) exported and logged."""
    from dlzoo.errors import CheckpointError

    run = client.get_run(trained.run_id)
    runs = client.search_runs([run.info.experiment_id], f"tags.stage = 'evaluate' and tags.train_run_id = "
                              f"'{trained.run_id}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise CheckpointError(f"{trained.name}/{trained.version}: no finished evaluate run, so no exported translator")
    return mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="evaluation/translator.pt",
                                               dst_path=dst, tracking_uri=client.tracking_uri)


def wrapper_of(task: str, family: str, trained, config: dict, tracking_uri: str, client, kind: str = "probabilities"):
    """The `kind` answer version of `<task>-<family>` that holds `trained` (ANSWERS; `config` is its model_config:
    class names, action names, or a forecaster's window and scaling): the existing one, else a new one logged in a
    `stage=package` run of the task's experiment (so re-running the champions stage adds no versions)."""
    from mlflow.models import get_model_info

    from dlzoo.tracking import ensure_experiment

    name = f"{task}-{family}"
    for candidate in client.search_model_versions(f"name='{name}'"):
        if (candidate.tags or {}).get(WRAPS) == str(trained.version):
            return candidate
    mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs, start_run and register_model use the global store
    source = f"models:/{name}/{trained.version}"
    signature = answer_signature(kind, get_model_info(source).signature, config)
    experiment_id = ensure_experiment(task, None, tracking_uri)
    if kind == "texts":
        from dlzoo.serving import REQUIREMENTS as TEXT_REQUIREMENTS

        requirements = TEXT_REQUIREMENTS
    else:
        requirements = REQUIREMENTS + (STRUCTURED_REQUIREMENTS if kind in STRUCTURED else ())
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "texts":
            artifacts = {"translator": exported_translator(client, trained, tmp)}
        else:
            artifacts = {"network": mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)}
        if kind in STRUCTURED:  # the train run's resolved config: class names, board, search and sampling settings
            artifacts["config"] = mlflow.artifacts.download_artifacts(
                run_id=trained.run_id, artifact_path="config.yaml", dst_path=tmp, tracking_uri=client.tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=family, tags=package_tags(client, trained, source)):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=ANSWERS[kind](), artifacts=artifacts,
                code_paths=[str(PACKAGE_DIR)], model_config=dict(config), signature=signature,
                pip_requirements=[f"{p}=={installed_version(p).split('+')[0]}" for p in requirements])
    # registered with its tag in one call: a version without it would pass for a trained one
    return mlflow.register_model(info.model_uri, name, tags={WRAPS: str(trained.version), "dlzoo.answers": kind})
