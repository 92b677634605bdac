"""The generic evaluate entry: checkpoint + config -> task metrics on held-out data -> MLflow + DVC.

The task's own metric code is `cfg.evaluator` (e.g. dlzoo.evaluation.forecasting.evaluate);
this module loads and checks the checkpoint, runs it, and records the numbers in both places.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from dlzoo.config import build, require_keys
from dlzoo.data.common import read_json, write_json
from dlzoo.errors import CheckpointError
from dlzoo.evaluation.profiling import count_parameters
from dlzoo.tracking import flat_params, start_run
from dlzoo.training.callbacks import CHECKPOINT_KEY

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, task: str, family: str) -> dict:
    """Read a Lightning checkpoint written by dlzoo for this task and family, or say why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train it first (`dvc repro train@{task}-{family}`)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    meta = checkpoint.get(CHECKPOINT_KEY)
    if meta is None:
        raise CheckpointError(f"{path} was not written by dlzoo's trainer (no '{CHECKPOINT_KEY}' stamp)")
    if (meta.get("task"), meta.get("family")) != (task, family):
        raise CheckpointError(
            f"{path} holds a {meta.get('task')}/{meta.get('family')} model, not {task}/{family}"
        )
    return checkpoint


def load_trained_module(cfg: DictConfig):
    """(the family's LightningModule with its trained weights, checkpoint path): `cfg.checkpoint_path` or the
    train stage's best.ckpt, checked to hold this task/family and to fit the configured model."""
    ckpt_path = cfg.get("checkpoint_path") or Path(cfg.paths.model_dir) / "best.ckpt"
    checkpoint = load_checkpoint(ckpt_path, cfg.task, cfg.family)
    model = build(cfg.model, "model")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{ckpt_path} does not fit the configured model (was the model config changed after training?): {str(exc)[:300]}"
        ) from None
    return model.eval(), str(ckpt_path)


def evaluate(cfg: DictConfig) -> dict:
    require_keys(cfg, "task", "family", "data.module", "evaluator", "model")
    model_dir = Path(cfg.paths.model_dir)
    model, ckpt_path = load_trained_module(cfg)
    datamodule = build(cfg.data.module, "data.module")
    evaluator = build(cfg.evaluator, "evaluator")
    reports_dir = Path(cfg.paths.reports_dir)
    metrics, files = evaluator(model, datamodule, reports_dir)
    metrics["num_params"] = count_parameters(model)

    summary_path = model_dir / "train_summary.json"
    train_run_id = read_json(summary_path)["run_id"] if summary_path.exists() else ""
    with start_run(cfg, "evaluate", train_run_id=train_run_id, checkpoint=str(ckpt_path)):
        import mlflow

        params = flat_params(cfg)
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(list(params.items())[i : i + 100]))
        mlflow.log_metrics(metrics)
        for f in files:
            mlflow.log_artifact(str(f), "evaluation")
    # The DVC metrics file is written last, so a failed run never leaves numbers behind.
    write_json(cfg.paths.metrics_file, metrics)
    log.info("evaluated %s: %s", cfg.experiment_name, {k: round(v, 5) for k, v in metrics.items()})
    return metrics
