"""Helpers that keep every MLflow run of the project named, tagged and stored the same way.

- Store: `tracking.uri` (SQLite `mlflow.db` at the repo root by default, wherever DVC runs the stage;
  `MLFLOW_TRACKING_URI` overrides it so a cluster can point at a tracking server).
- Experiment = task, run name = family, tags task/family/stage/git_commit/dvc_stage.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def project_root() -> Path:
    """Where relative store and artifact paths point: the repository DVC runs the stage for (`DVC_ROOT`, which
    DVC sets for every stage command, and for `dvc exp run --temp` and queued experiments to the repository the
    experiment came from, not the temporary copy it runs in), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative `sqlite:///path` absolute, against project_root(): DDP workers, later stages and
    experiments run in DVC's temporary copies all write to the repository's store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(project_root() / uri[len(prefix):])
    return uri


def artifact_location(root: str, experiment: str) -> str | None:
    """Artifact folder for a new experiment: `<root>/<experiment>` beside the store (a relative root against
    project_root(), so a temporary copy's runs keep their artifacts once DVC removes it), or the server's default."""
    return (project_root() / root / experiment).resolve().as_uri() if root else None


def client(tracking_uri: str | None = None):
    """One MlflowClient per store and process (each new client re-opens the store: seconds on SQLite)."""
    import mlflow

    return _client(tracking_uri or mlflow.get_tracking_uri())


@functools.lru_cache(maxsize=None)
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def ensure_experiment(name: str, artifact_root: str | None, tracking_uri: str | None = None) -> str:
    client_ = client(tracking_uri)
    experiment = client_.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client_.create_experiment(name, artifact_location=artifact_location(artifact_root, name))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: DictConfig, stage: str, **extra: str) -> dict[str, str]:
    """The tags every run carries, so runs can be filtered by task, family and pipeline stage."""
    tags = {
        "task": cfg.task,
        "family": cfg.family,
        "stage": stage,
        "profile": cfg.profile_name,
        "git_commit": git_commit(),
        # DVC exports DVC_STAGE (e.g. 'train_binary-addition-rnn') to every stage command.
        "dvc_stage": os.environ.get("DVC_STAGE", f"{stage}_{cfg.experiment_name} (outside dvc)"),
    }
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def flat_params(cfg: DictConfig | Mapping, sep: str = ".") -> dict[str, str]:
    """The resolved config flattened to `a.b.c -> value` (MLflow caps a value at 6000 chars)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    flat: dict[str, str] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}{sep}{key}" if prefix else str(key), value)
        else:
            flat[prefix] = str(node)[:6000]

    walk("", container)
    return flat


@contextlib.contextmanager
def start_run(cfg: DictConfig, stage: str, run_name: str | None = None, **extra_tags: str) -> Iterator:
    """Open an MLflow run in the task's experiment. An exception inside marks the run FAILED."""
    import mlflow

    uri = resolve_tracking_uri(cfg.tracking.uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = ensure_experiment(cfg.task, cfg.tracking.artifact_root, uri)
    tags = run_tags(cfg, stage, **extra_tags)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or cfg.family, tags=tags) as run:
        yield run
