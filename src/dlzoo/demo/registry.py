"""Read-only access to the champions: which family won a task, its held-out headline, its model and the resolved
config of the train run that produced it. Nothing here logs, registers or tags."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ALIAS = "champion"
WRAPS = "dlzoo.wraps_version"  # dlzoo.tracking.probabilities: an answer version names the trained version it holds

# what registers a task's champion, for the line a tab without one shows
PRODUCED_BY = "make repro"


@dataclass
class Champion:
    """A task's champion as the registry records it."""

    task: str
    family: str
    version: str
    metric: str | None
    value: str | None
    tracking_uri: str
    tags: dict = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.task}@{ALIAS}"

    @property
    def headline(self) -> str:
        """One line for the tab's header: family and held-out number."""
        number = f", held-out {self.metric} = {self.value}" if self.metric and self.value else ""
        return f"champion: **{self.family}** (`{self.uri}`, version {self.version}{number})"

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    @cached_property
    def trained_version(self):
        """The version the train stage registered (an answer version's `dlzoo.wraps_version`)."""
        client = self._client()
        name, _, number = self.tags.get("dlzoo.source_model", "").partition("/")
        source = client.get_model_version(name, number)
        wrapped = (source.tags or {}).get(WRAPS)
        return client.get_model_version(name, wrapped) if wrapped else source

    @cached_property
    def config(self) -> DictConfig:
        """The resolved config the train run logged (`config.yaml`): data paths, model and search settings."""
        import mlflow

        run_id = self.trained_version.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp,
                                                       tracking_uri=self.tracking_uri)
            return OmegaConf.create(Path(path).read_text())

    def pyfunc(self):
        """The champion as `mlflow models serve` answers with it (probabilities, actions, forecasts, text)."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.pyfunc.load_model(self.uri)

    def network(self):
        """The trained network the evaluate stage measured (torch.export program or pickled module)."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        version = self.trained_version
        return mlflow.pytorch.load_model(f"models:/{version.name}/{version.version}")


def headline_metrics(champions_file: Path = Path("metrics/champions.json")) -> dict[str, str]:
    """task -> its recipes' headline metric name: from the champions stage's file when it is here (instant), else
    from the composed recipes (results.metric; seconds)."""
    import json

    if champions_file.is_file():
        return {task: entry["metric"] for task, entry in json.loads(champions_file.read_text()).items()}
    from dlzoo.results import task_tables

    return {task: entry["metric"] for task, entry in task_tables().items()}


def find(task: str, tracking_uri: str, metric: str | None = None) -> Champion | None:
    """The task's champion, or None when the store has no `<task>@champion` (or no store at all)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return None
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(task, ALIAS)
    except MlflowException:
        return None
    tags = dict(version.tags or {})
    return Champion(task=task, family=tags.get("family", "?"), version=str(version.version), metric=metric,
                    value=tags.get(metric) if metric else None, tracking_uri=tracking_uri, tags=tags)


def missing_line(task: str) -> str:
    """What a tab shows when its task has no champion in the store."""
    return (f"No champion for `{task}` in this store: `{PRODUCED_BY}` trains and evaluates its families, and its "
            "champions stage registers the best.")
