"""Build a Lightning Trainer from the `trainer` config group, refusing combinations that cannot run
here with a one-line reason (instead of a traceback from deep inside Lightning or CUDA)."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlzoo.errors import ConfigError
from dlzoo.hardware import resolve_precision


def _strategy_name(trainer_cfg: DictConfig) -> str:
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower().removesuffix("strategy")
    return str(strategy).lower()


def check_trainer_config(trainer_cfg: DictConfig) -> None:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    precision = resolve_precision(trainer_cfg.get("precision", "32-true"), accelerator)
    strategy = _strategy_name(trainer_cfg)
    has_cuda = torch.cuda.is_available()
    if strategy.startswith("fsdp") and not has_cuda:
        raise ConfigError("trainer=fsdp needs CUDA GPUs and this machine has none; use trainer=ddp for multi-process training on CPU")
    if accelerator in ("gpu", "cuda") and not has_cuda:
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu (or trainer=ddp)")
    if precision.startswith("16") and (accelerator == "cpu" or not has_cuda):
        raise ConfigError(f"trainer.precision={precision} (float16 AMP) needs a GPU; on CPU use bf16-mixed or 32-true")


def build_trainer(trainer_cfg: DictConfig, **kwargs):
    """Instantiate `trainer_cfg` (a `_target_: lightning.pytorch.Trainer` node) with loggers/callbacks."""
    check_trainer_config(trainer_cfg)
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    cfg["precision"] = resolve_precision(cfg.get("precision", "32-true"), str(cfg.get("accelerator", "auto")))
    return instantiate(cfg, **kwargs, _convert_="all")
