"""The generic training entry: config -> data, model, Trainer -> fit -> checkpoint + MLflow run.

Every family goes through here; what differs between families lives in their config
(`data`, `model`, `trainer` groups) and in their own modules under dlzoo.data / dlzoo.models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from dlzoo.config import build, require_keys
from dlzoo.io import write_json
from dlzoo.plotting import plot_learning_curves
from dlzoo.models import count_parameters
from dlzoo.tracking import artifact_location, flat_params, resolve_tracking_uri, run_tags
from dlzoo.training.callbacks import CheckpointStamp, EpochHistory
from dlzoo.training.trainer import build_trainer, check_trainer_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit `cfg.model` on `cfg.data`; return a summary (run id, best checkpoint, best score)."""
    require_keys(cfg, "task", "family", "data.module", "model")
    check_trainer_config(cfg.trainer)  # before any run or file is created
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data.module, "data.module")
    model = build(cfg.model, "model")
    datamodule.setup("fit")  # fail on missing data before an MLflow run is opened

    model_dir = Path(cfg.paths.model_dir)
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    checkpoint = ModelCheckpoint(
        dirpath=model_dir, filename="best", monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode,
        save_top_k=1, save_last=False, enable_version_counter=False,
    )
    history = EpochHistory()
    n_params = count_parameters(model)
    logger = MLFlowLogger(
        experiment_name=cfg.task,
        run_name=cfg.family,
        tracking_uri=resolve_tracking_uri(cfg.tracking.uri),
        artifact_location=artifact_location(cfg.tracking.artifact_root, cfg.task),
        tags=run_tags(cfg, "train", num_params=n_params),
    )
    trainer = build_trainer(
        cfg.trainer,
        logger=logger,
        callbacks=[checkpoint, history, CheckpointStamp(cfg.task, cfg.family, cfg.experiment_name)],
    )
    logger.log_hyperparams(flat_params(cfg))
    logger.log_metrics({"num_params": n_params})
    trainer.fit(model, datamodule=datamodule)

    if not trainer.is_global_zero:  # only rank 0 writes files and talks to MLflow
        return {}
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is None or not best.exists():
        raise RuntimeError(f"training finished without a checkpoint in {model_dir}: was '{cfg.checkpoint.monitor}' ever logged?")
    summary = {
        "run_id": logger.run_id,
        "task": cfg.task,
        "family": cfg.family,
        "experiment": cfg.experiment_name,
        "checkpoint": str(best),
        "best_score": float(checkpoint.best_model_score),
        "monitor": cfg.checkpoint.monitor,
        "num_params": n_params,
        "epochs": trainer.current_epoch,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
    }
    write_json(model_dir / "train_summary.json", summary)
    (model_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    _log_train_artifacts(cfg, logger.run_id, model, datamodule, history, best)
    log.info("trained %s: best %s = %.5f (%s)", cfg.experiment_name, cfg.checkpoint.monitor, summary["best_score"], best)
    return summary


def _log_train_artifacts(cfg, run_id: str, model, datamodule, history: EpochHistory, best: Path) -> None:
    """Learning curves, resolved config, best checkpoint and the registered model, in the train run."""
    import mlflow
    import torch

    plots_dir = Path(cfg.paths.plots_dir)
    curve_csv = history.save_csv(plots_dir / "learning_curve.csv")
    curve_png = plot_learning_curves(curve_csv, plots_dir / "learning_curve.png", title=f"{cfg.task} / {cfg.family}")
    mlflow.set_tracking_uri(resolve_tracking_uri(cfg.tracking.uri))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        mlflow.log_artifact(str(curve_csv), "plots")
        mlflow.log_artifact(str(curve_png), "plots")
        mlflow.log_artifact(str(best), "checkpoints")
        if not cfg.tracking.log_model:
            return
        # Log the bare nn.Module with the best weights, a signature and an input example.
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        net = model.net.eval()
        example = next(iter(datamodule.val_dataloader()))[0][:4]
        with torch.no_grad():
            output = net(example)
        # Tensor-in/tensor-out models get a signature; structured outputs (detections) are logged without.
        tensor_io = isinstance(example, torch.Tensor) and isinstance(output, torch.Tensor)
        signature = mlflow.models.infer_signature(example.numpy(), output.numpy()) if tensor_io else None
        register_as = f"{cfg.task}-{cfg.family}" if cfg.tracking.register_model else None
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        # "pt2" (torch.export: a graph, no pickled code) needs a tensor example to trace; nets with
        # structured outputs (detectors), data-dependent loops (translators' decoding; their deployable
        # form is the TorchScript export of the evaluate stage) and any net torch.export cannot trace are pickled.
        if tensor_io and getattr(model, "mlflow_serialization", "pt2") == "pt2":
            try:
                mlflow.pytorch.log_model(net, name="model", signature=signature, input_example=example.numpy(),
                                         serialization_format="pt2", registered_model_name=register_as,
                                         pip_requirements=requirements)
                return
            except Exception as exc:  # torch.export raises many types; the pickle below still logs the model
                log.warning("torch.export could not save %s (%s); logging it pickled", cfg.family, str(exc)[:200])
        mlflow.pytorch.log_model(net, name="model", signature=signature, serialization_format="pickle",
                                 registered_model_name=register_as, pip_requirements=requirements)
