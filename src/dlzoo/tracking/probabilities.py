"""A classification champion served as class probabilities (issue 15).

The train stage registers a classifier's bare network (a `torch.export` program: images in, logits out), the
exact form the evaluate stage measured. A client of `mlflow models serve` wants a probability per named class
instead, so for the tasks in `champions.probabilities` the champions stage registers one more version of the
champion's model `<task>-<family>`: an `mlflow.pyfunc` model that holds the trained version's files and answers
softmax(logits), one column per class name. That version is tagged `dlzoo.wraps_version` (the trained version
it holds) and carries the alias `champion`; the trained versions keep answering logits.

    mlflow models serve -m models:/digits-<family>@champion --env-manager local
    # {"inputs": [[[[...8x8 image...]]]]} -> {"predictions": [{"0": 0.001, ..., "9": 0.97}, ...]}
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


def wrapper_of(task: str, family: str, trained, classes: list[str], tracking_uri: str, client):
    """The probability version of `<task>-<family>` that holds `trained`: the existing one, else a new one logged in a
    `stage=package` run of the task's experiment (so re-running the champions stage adds no versions)."""
    from mlflow.models import ModelSignature, get_model_info
    from mlflow.types import ColSpec, Schema

    from dlzoo.tracking import ensure_experiment

    name = f"{task}-{family}"
    for candidate in client.search_model_versions(f"name='{name}'"):
        if (candidate.tags or {}).get(WRAPS) == str(trained.version):
            return candidate
    mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs, start_run and register_model use the global store
    source = f"models:/{name}/{trained.version}"
    trained_signature = get_model_info(source).signature
    signature = ModelSignature(inputs=trained_signature.inputs if trained_signature else None,
                               outputs=Schema([ColSpec("double", c) for c in classes]))
    experiment_id = ensure_experiment(task, None, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        network = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        with mlflow.start_run(experiment_id=experiment_id, run_name=family, tags=package_tags(client, trained, source)):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=ClassProbabilities(), artifacts={"network": network},
                code_paths=[str(PACKAGE_DIR)], model_config={"classes": list(classes)}, signature=signature,
                pip_requirements=[f"{p}=={installed_version(p).split('+')[0]}" for p in REQUIREMENTS])
    # registered with its tag in one call: a version without it would pass for a trained one
    return mlflow.register_model(info.model_uri, name, tags={WRAPS: str(trained.version)})
