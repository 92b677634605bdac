"""The generic evaluate entry: checkpoint + config -> task metrics on held-out data -> MLflow + DVC.

The task's own metric code is `cfg.evaluator` (e.g. dlzoo.evaluation.forecasting.evaluate);
this module loads and checks the checkpoint, runs it, and records the numbers in both places.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlzoo.checkpoints import load_trained_module
from dlzoo.config import build, require_keys
from dlzoo.io import read_json, write_json
from dlzoo.models import count_parameters
from dlzoo.tracking import flat_params, start_run

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    require_keys(cfg, "task", "family", "evaluator", "model")
    model_dir = Path(cfg.paths.model_dir)
    model, ckpt_path = load_trained_module(cfg)
    # A supervised family is scored on its DataModule's test split; a family that owns its loop
    # (an agent, a self-play system) has no dataset, and its evaluator brings its own held-out episodes or games.
    module_cfg = OmegaConf.select(cfg, "data.module")
    datamodule = build(module_cfg, "data.module") if module_cfg is not None else None
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
