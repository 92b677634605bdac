"""Checkpoint stamping and loading: the neutral home that training writes through and evaluation and
compression read through, so neither reaches into the other.

Every checkpoint a runner saves carries a `dlzoo` stamp (task, family, experiment), so a stage refuses a
checkpoint of another task or family with a one-line error instead of loading foreign weights."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dlzoo.config import build
from dlzoo.errors import CheckpointError

CHECKPOINT_KEY = "dlzoo"


def stamp(task: str, family: str, experiment: str) -> dict[str, str]:
    return {"task": task, "family": family, "experiment": experiment}


def load_checkpoint(path: str | Path, task: str, family: str) -> dict:
    """Read a checkpoint written by a dlzoo runner for this task and family, or say why not."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train it first (`dvc repro train_{task}-{family}`)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a dlzoo checkpoint (no state_dict)")
    meta = checkpoint.get(CHECKPOINT_KEY)
    if meta is None:
        raise CheckpointError(f"{path} was not written by a dlzoo runner (no '{CHECKPOINT_KEY}' stamp)")
    if (meta.get("task"), meta.get("family")) != (task, family):
        raise CheckpointError(f"{path} holds a {meta.get('task')}/{meta.get('family')} model, not {task}/{family}")
    return checkpoint


def load_trained_module(cfg: DictConfig):
    """(the family's module with its trained weights, checkpoint path): `cfg.checkpoint_path` or the
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
