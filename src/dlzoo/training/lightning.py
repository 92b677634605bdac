"""The default runner: supervised learning with a Lightning Trainer (any family whose recipe names a
DataModule in `data.module` and a LightningModule in `model`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dlzoo.config import build, require_keys
from dlzoo.training.callbacks import CheckpointStamp, EpochHistory
from dlzoo.training.run import RunContext
from dlzoo.training.trainer import build_trainer


def fit(cfg: DictConfig, ctx: RunContext) -> dict:
    """Fit `cfg.model` on `cfg.data.module`; the best checkpoint by `cfg.checkpoint` goes to ctx.model_dir."""
    require_keys(cfg, "data.module", "model")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    datamodule = build(cfg.data.module, "data.module")
    model = build(cfg.model, "model")
    datamodule.setup("fit")  # fail on missing data before any epoch runs

    checkpoint = ModelCheckpoint(
        dirpath=ctx.model_dir, filename="best", monitor=ctx.monitor, mode=ctx.mode,
        save_top_k=1, save_last=False, enable_version_counter=False,
    )
    # The pipeline opened the run; the logger writes into it (and only on rank 0).
    logger = MLFlowLogger(experiment_name=cfg.task, run_name=cfg.family, tracking_uri=ctx.tracking_uri, run_id=ctx.run_id)
    trainer = build_trainer(
        cfg.trainer, logger=logger,
        callbacks=[checkpoint, EpochHistory(ctx), CheckpointStamp(cfg.task, cfg.family, cfg.experiment_name)],
    )
    trainer.fit(model, datamodule=datamodule)
    if not trainer.is_global_zero:
        return {}
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is None or not best.exists():
        raise RuntimeError(f"training finished without a checkpoint in {ctx.model_dir}: was '{ctx.monitor}' ever logged?")

    import torch

    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    example = next(iter(datamodule.val_dataloader()))[0][:4]
    return {
        "checkpoint": str(best),
        "best_score": float(checkpoint.best_model_score),
        "epochs": trainer.current_epoch,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "model": model,
        "example": example,
    }
