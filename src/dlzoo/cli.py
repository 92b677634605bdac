"""Shared plumbing for the thin `pipelines/*.py` stage entry points."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

from dlzoo.errors import DlzooError

log = logging.getLogger("dlzoo")


def quiet_libraries() -> None:
    """Silence warnings that say nothing to a user of this pipeline."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("mlflow", "alembic", "matplotlib", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_stage(fn: Callable, cfg) -> None:
    """Run a stage function; a DlzooError ends the process with its one-line message and exit code 2."""
    quiet_libraries()
    try:
        fn(cfg)
    except DlzooError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
