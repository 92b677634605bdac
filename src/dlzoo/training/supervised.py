"""The default runner: supervised Lightning fitting of `cfg.model` on `cfg.data.module` (any family whose recipe
names a DataModule and a LightningModule) that survives being killed (issue 16): it resumes from its last
complete epoch.

At each epoch end it keeps a resume point in `<paths.model_dir>.resume/`, beside the stage's outputs but not
among them (`dvc repro` deletes a stage's outputs before it runs it again, and must not track this):
- `epoch-<k>.ckpt`: Lightning's training state (weights, optimiser, schedulers, loops, callbacks) with the RNG
  states of torch, numpy and random (`RngState`), so the resumed run draws the batches and dropout masks an
  uninterrupted run would;
- `best.ckpt`: a copy of the best checkpoint so far, put back into the emptied output folder on resume;
- `resume.json`, written last (the commit point): that epoch's file, the MLflow run id, the learning-curve rows,
  the seconds spent, and a fingerprint of the resolved config and of the `dlzoo` source.

A train stage killed (`kill -9`, a pre-empted or requeued SLURM job) and started again with the same config
and code continues the same MLflow run from its last complete epoch (the run's tag `dlzoo.resumes` counts the
restarts); a metric point the run already holds is not logged again, so its history has no gap and no
repeat, and the final weights and metrics are an uninterrupted run's. A resume point of another config or
code is discarded with one log line (its run is marked KILLED). The point is removed when the run ends well.
Lightning's own SLURM auto-requeue saves mid-epoch checkpoints that cannot resume exactly (the order of the
epoch's remaining batches is lost), so it is turned off here; a requeued job resumes from the epoch point.

Further Lightning callbacks come from the config's `callbacks` group by name (conf/callbacks/default.yaml: the
learning rate of every optimiser each epoch, `LearningRateMonitor`). A fresh run also records its data as an
MLflow dataset input with DVC's digest, and its DVC experiment name (dlzoo.tracking.lineage, issue 15).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dlzoo.config import build, require_keys
from dlzoo.training.callbacks import CheckpointStamp, EpochHistory
from dlzoo.training.run import RunContext
from dlzoo.training.trainer import build_trainer

log = logging.getLogger("dlzoo")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
RESUME_FILE = "resume.json"


def fingerprint(cfg: DictConfig) -> str:
    """The resolved config and every source file of `dlzoo`: a resume point is only valid for both."""
    digest = hashlib.sha256(OmegaConf.to_yaml(cfg, resolve=True).encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class RngState(L.Callback):
    """The global generators' states in every checkpoint, restored before a resumed fit draws anything."""

    def state_dict(self) -> dict:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "random": random.getstate(),
                 # a tensor, not a numpy array: checkpoints load with torch.load(weights_only=True)
                 "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_rest": [int(pos), int(has_gauss), float(gauss)]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["random"])
        pos, has_gauss, gauss = state["numpy_rest"]
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumePoint(Checkpoint):
    """Saves the training state at each epoch end and commits it as the resume point when the next epoch
    starts (or training ends), once Lightning has logged the epoch's metrics: a point never precedes metrics
    that a resumed run would not log again. A `Checkpoint`, so that Lightning runs it after the other
    callbacks, ModelCheckpoint included when it is listed after it: the saved state holds that epoch's
    learning-curve row (EpochHistory) and best checkpoint."""

    def __init__(self, directory: Path, ctx: RunContext, fingerprint: str, seconds_before: float = 0.0) -> None:
        self.directory, self.ctx, self.fingerprint = directory, ctx, fingerprint
        self.seconds_before, self.start = seconds_before, time.perf_counter()
        self.best_copied: tuple | None = None
        self.pending: dict | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        name = f"epoch-{trainer.current_epoch}.ckpt"
        trainer.save_checkpoint(self.directory / name)  # every rank calls it (a collective under DDP/FSDP)
        if trainer.is_global_zero:
            self.pending = {"fingerprint": self.fingerprint, "checkpoint": name, "epoch": trainer.current_epoch,
                            "run_id": self.ctx.run_id, "history": list(self.ctx.history),
                            "best_seen": self.ctx.best_seen,
                            "seconds": round(self.seconds_before + time.perf_counter() - self.start, 3)}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit()

    def _commit(self) -> None:
        if self.pending is None:
            return
        best = self.ctx.checkpoint_path
        if best.is_file() and self.best_copied != (best.stat().st_mtime_ns, best.stat().st_size):
            shutil.copyfile(best, self.directory / "best.ckpt.tmp")
            (self.directory / "best.ckpt.tmp").replace(self.directory / "best.ckpt")
            self.best_copied = (best.stat().st_mtime_ns, best.stat().st_size)
        # not dlzoo.io.write_json, which sorts keys: the rows keep their column order for the learning curve
        (self.directory / "resume.json.tmp").write_text(json.dumps(self.pending))
        (self.directory / "resume.json.tmp").replace(self.directory / RESUME_FILE)
        for old in self.directory.glob("epoch-*.ckpt"):
            if old.name != self.pending["checkpoint"]:
                old.unlink()
        self.pending = None


class _ResumedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that leaves out the metric points its run already holds: after a resume, the steps
    between the resume point and the kill run again and log the same values at the same steps (Lightning
    logs some keys, e.g. `epoch`, twice at one step, hence a count per key and step)."""

    def __init__(self, *args, logged: Counter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._logged = logged if logged is not None else Counter()

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is not None and self._logged:
            kept = {}
            for key, value in metrics.items():
                if self._logged[(key, step)] > 0:
                    self._logged[(key, step)] -= 1
                else:
                    kept[key] = value
            if not kept:
                return
            metrics = kept
        super().log_metrics(metrics, step)


def _logged_points(tracking_uri: str, run_id: str) -> Counter:
    """(metric key, step) -> how many points the run holds there."""
    from dlzoo.tracking import client

    mlflow_client = client(tracking_uri)
    return Counter((key, m.step) for key in mlflow_client.get_run(run_id).data.metrics
                   for m in mlflow_client.get_metric_history(run_id, key))


def load_resume_point(directory: Path, fingerprint: str, ctx: RunContext) -> dict | None:
    """The committed resume point in `directory` if it was written for this config and code, else None
    (one of another config or code is removed, and its run marked KILLED)."""
    meta_file = directory / RESUME_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring the unreadable resume point %s", meta_file)
        return None
    if meta.get("fingerprint") == fingerprint and (directory / str(meta.get("checkpoint"))).is_file():
        return meta
    log.info("discarding the resume point in %s: it was written for another config or code", directory)
    if ctx.is_main:
        if meta.get("run_id"):
            from dlzoo.tracking import client

            run = client(ctx.tracking_uri).get_run(meta["run_id"])
            if run.info.status == "RUNNING":
                client(ctx.tracking_uri).set_terminated(meta["run_id"], "KILLED")
        shutil.rmtree(directory, ignore_errors=True)
    return None


def continue_run(ctx: RunContext, run_id: str) -> None:
    """Make the killed attempt's MLflow run this stage's run again (rank 0): RUNNING, its `dlzoo.resumes` tag
    counted up. Also the protocol runner's (dlzoo.training.protocol), for its parent run."""
    from dlzoo.tracking import client

    mlflow_client = client(ctx.tracking_uri)
    run = mlflow_client.get_run(run_id)
    mlflow_client.update_run(run_id, status="RUNNING")
    mlflow_client.set_tag(run_id, "dlzoo.resumes", str(int(run.data.tags.get("dlzoo.resumes", "0")) + 1))
    # RunContext opens a new run on first use; a resumed stage continues the run it began instead
    ctx._run_id = run_id


def _resume_run(ctx: RunContext, meta: dict, directory: Path) -> None:
    """Continue the killed attempt's MLflow run, learning curve and best checkpoint (rank 0)."""
    continue_run(ctx, meta["run_id"])
    ctx.history = list(meta["history"])
    ctx.best_seen = meta.get("best_seen")
    ctx._start -= meta.get("seconds", 0.0)  # seconds per epoch and the ETA count the killed attempt's epochs
    if (directory / "best.ckpt").is_file():
        ctx.model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(directory / "best.ckpt", ctx.checkpoint_path)


def fit(cfg: DictConfig, ctx: RunContext) -> dict:
    """Fit `cfg.model` on `cfg.data.module`, resuming a killed attempt; the best checkpoint by
    `cfg.checkpoint` goes to ctx.model_dir, with the further Lightning callbacks of `cfg.callbacks`."""
    require_keys(cfg, "data.module", "model")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from dlzoo.tracking.lineage import log_lineage

    datamodule = build(cfg.data.module, "data.module")
    model = build(cfg.model, "model")
    datamodule.setup("fit")  # fail on missing data before any epoch runs
    callbacks = {name: build(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items()}

    directory = Path(f"{ctx.model_dir}.resume")
    code = fingerprint(cfg)
    meta = load_resume_point(directory, code, ctx)
    logged: Counter = Counter()
    if meta is not None:
        log.info("resuming %s after epoch %d (MLflow run %s)", cfg.experiment_name, meta["epoch"] + 1, meta["run_id"])
        if ctx.is_main:
            _resume_run(ctx, meta, directory)
            logged = _logged_points(ctx.tracking_uri, meta["run_id"])
    elif ctx.is_main:
        log_lineage(ctx.tracking_uri, ctx.run_id, cfg.data.get("name", cfg.task), cfg.data.dir)
    directory.mkdir(parents=True, exist_ok=True)

    checkpoint = ModelCheckpoint(
        dirpath=ctx.model_dir, filename="best", monitor=ctx.monitor, mode=ctx.mode,
        save_top_k=1, save_last=False, enable_version_counter=False,
    )
    # The pipeline opened the run (or this resumes one); the logger writes into it (and only on rank 0).
    logger = _ResumedMLFlowLogger(experiment_name=cfg.task, run_name=cfg.family, tracking_uri=ctx.tracking_uri,
                                  run_id=ctx.run_id, logged=logged)
    # the pipeline's own callbacks first; ModelCheckpoint and then ResumePoint run last (Checkpoint subclasses)
    every = [EpochHistory(ctx), CheckpointStamp(cfg.task, cfg.family, cfg.experiment_name), RngState(),
             *callbacks.values(),
             checkpoint, ResumePoint(directory, ctx, code, meta.get("seconds", 0.0) if meta else 0.0)]
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    trainer = build_trainer(cfg.trainer, logger=logger, callbacks=every, plugins=plugins)
    trainer.fit(model, datamodule=datamodule, ckpt_path=directory / meta["checkpoint"] if meta else None)
    if not trainer.is_global_zero:
        return {}
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is None or not best.exists():
        raise RuntimeError(f"training finished without a checkpoint in {ctx.model_dir}: was '{ctx.monitor}' ever logged?")
    shutil.rmtree(directory, ignore_errors=True)  # finished: a later run starts afresh

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
        **({"resumed_after_epoch": meta["epoch"] + 1} if meta else {}),
    }
