"""Shared plumbing for the thin `pipelines/*.py` stage entry points."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable

from dlzoo.errors import DlzooError

log = logging.getLogger("dlzoo")


def _process_age() -> float:
    """Seconds since this process started (the interpreter's own start-up and every import included)."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # no psutil: count from this module's import instead
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def quiet_libraries() -> None:
    """Silence warnings that say nothing to a user of this pipeline."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("mlflow", "alembic", "matplotlib", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def stage_name(cfg) -> str:
    """DVC's name for the running stage (DVC exports DVC_STAGE), else the entry point's."""
    return os.environ.get("DVC_STAGE") or os.path.basename(sys.argv[0]).removesuffix(".py")


def run_stage(fn: Callable, cfg) -> None:
    """Run a stage function and print one line with its elapsed time; a DlzooError ends the process
    with its one-line message and exit code 2."""
    quiet_libraries()
    name = stage_name(cfg)
    startup = _process_age()
    started = time.perf_counter()
    try:
        fn(cfg)
    except DlzooError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    work = time.perf_counter() - started
    _record_imports(name)
    if _is_rank_zero():
        print(f"{name}: done in {startup + work:.1f} s (start-up {startup:.1f} s, work {work:.1f} s)", flush=True)


def _is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _record_imports(name: str) -> None:
    """With DLZOO_IMPORT_AUDIT=<file>, append the project files this stage really imported: the test that
    checks them against the stage's DVC deps (tests/test_make_repro.py) reads them."""
    path = os.environ.get("DLZOO_IMPORT_AUDIT")
    if not path:
        return
    import json

    files = sorted({os.path.abspath(m.__file__) for n, m in list(sys.modules.items())
                    if (n == "dlzoo" or n.startswith("dlzoo.")) and getattr(m, "__file__", None)})
    with open(path, "a") as f:
        f.write(json.dumps({"stage": name, "script": os.path.abspath(sys.argv[0]), "files": files}) + "\n")
