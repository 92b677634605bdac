"""Turning a composed Hydra config into objects, with errors a user can act on."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlzoo.errors import ConfigError, DlzooError


def require_keys(cfg: DictConfig, *keys: str) -> None:
    """Fail early when a mandatory value (`???`) is unset, e.g. no `experiment=` was chosen."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k) or OmegaConf.select(cfg, k) is None]
    if missing:
        raise ConfigError(
            f"config value(s) {', '.join(missing)} not set: pick a recipe with experiment=<task>-<family> "
            f"(see conf/experiment/)"
        )


def build(node: DictConfig, what: str, **kwargs) -> Any:
    """`hydra.utils.instantiate` that surfaces our own errors (bad values) as they are and names the node."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, DlzooError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, DlzooError):
            raise cause from None
        raise ConfigError(f"could not build {what} from config: {exc}") from exc
