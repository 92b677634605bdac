"""What the train stage gives every runner, supervised or not (the runner contract).

A runner is `runner(cfg, ctx) -> dict`, named by the recipe (`runner: {_target_: ..., _partial_: true}`).
The pipeline owns the MLflow run (experiment = task, run name = family, the standard tags): it is opened
the first time the runner needs it (`ctx.run_id`), so a runner that fails on its inputs first leaves no run
behind, and closed after the runner returns (FAILED if it raised). Through `ctx` the runner gets

- `ctx.log_metrics(metrics, step)`: metrics into that run (rank 0 only);
- `ctx.end_epoch(row)`: one row of the learning curve (`epoch`, `train/*`, `val/*` keys), printed as one
  progress line with seconds per epoch and the stage's ETA, plotted and logged by the pipeline at the end;
- `ctx.save_checkpoint(state_dict, score)`: the best checkpoint by `cfg.checkpoint.monitor/mode`, stamped
  with task and family so the evaluate and compress stages load it like any other family's.

What the runner returns goes into `train_summary.json`; `model` (an nn.Module with the best weights) and
`example` (an input batch), when given, are logged as the MLflow model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from dlzoo.checkpoints import CHECKPOINT_KEY, stamp

log = logging.getLogger("dlzoo")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(name: str, row: dict, total: int | None, seconds_per_epoch: float, monitor: str, best) -> str:
    """`train_digits-cnn epoch 3/40  train/loss 0.1234  val/accuracy 0.9861 (best 0.9861)  2.1 s/epoch  ETA 1m18s`."""
    epoch = int(row.get("epoch", 0)) + 1
    parts = [f"{name} epoch {epoch}" + (f"/{total}" if total else "")]
    for key in sorted(k for k in row if k.startswith(("train/", "val/"))):
        if key.startswith("train/") and not key.endswith("loss"):
            continue
        value = row[key]
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        text = f"{key} {value:.4g}"
        if key == monitor and best is not None:
            text += f" (best {best:.4g})"
        parts.append(text)
    parts.append(f"{seconds_per_epoch:.1f} s/epoch")
    if total:
        parts.append(f"ETA {_duration(max(total - epoch, 0) * seconds_per_epoch)}")
    return "  ".join(parts)


class RunContext:
    def __init__(self, cfg: DictConfig, tracking_uri: str, is_main: bool = True, open_run=None,
                 total_epochs: int | None = None):
        self.cfg, self.tracking_uri, self._is_main, self._open_run = cfg, tracking_uri, is_main, open_run
        self._run_id: str | None = None
        self.model_dir, self.plots_dir = Path(cfg.paths.model_dir), Path(cfg.paths.plots_dir)
        self.monitor, self.mode = cfg.checkpoint.monitor, cfg.checkpoint.mode
        self.total_epochs = total_epochs
        self.history: list[dict] = []
        self.best_score: float | None = None  # of the saved checkpoint
        self.best_seen: float | None = None   # of the monitored metric, for the progress line
        self.name = os.environ.get("DVC_STAGE") or f"train_{cfg.experiment_name}"
        self._start = time.perf_counter()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and talks to MLflow."""
        return self._is_main

    @property
    def run_id(self) -> str | None:
        """The MLflow run of this stage (opened on first use, rank 0 only; None on other ranks)."""
        if self._is_main and self._run_id is None and self._open_run is not None:
            self._run_id = self._open_run()
        return self._run_id

    @property
    def run_opened(self) -> bool:
        return self._run_id is not None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.is_main:
            return
        from mlflow.entities import Metric

        from dlzoo.tracking import client

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        client(self.tracking_uri).log_batch(self.run_id, metrics=batch)

    def end_epoch(self, row: dict) -> None:
        """Record one learning-curve row and print its progress line."""
        now = time.perf_counter()
        self.history.append(dict(row))
        done = len(self.history)
        seconds_per_epoch = (now - self._start) / done
        score = row.get(self.monitor)
        if self._better(score, self.best_seen):
            self.best_seen = score
        if self.is_main:
            print(progress_line(self.name, row, self.total_epochs, seconds_per_epoch, self.monitor, self.best_seen), flush=True)

    def _better(self, score, than) -> bool:
        if score is None or not math.isfinite(score):
            return False
        if than is None:
            return True
        return score > than if self.mode == "max" else score < than

    def is_better(self, score: float) -> bool:
        """Would `score` of the monitored metric beat the best checkpoint saved so far?"""
        return self._better(score, self.best_score)

    @property
    def checkpoint_path(self) -> Path:
        return self.model_dir / "best.ckpt"

    def save_checkpoint(self, state_dict: dict, score: float, **extra) -> bool:
        """Keep `state_dict` as the best checkpoint if `score` (the monitored metric) improved; stamped."""
        if not self.is_better(score):
            return False
        self.best_score = float(score)
        if self.is_main:
            import torch

            self.model_dir.mkdir(parents=True, exist_ok=True)
            checkpoint = {"state_dict": state_dict, "score": float(score), **extra,
                          CHECKPOINT_KEY: stamp(self.cfg.task, self.cfg.family, self.cfg.experiment_name)}
            tmp = self.checkpoint_path.with_suffix(".tmp")
            torch.save(checkpoint, tmp)
            tmp.replace(self.checkpoint_path)  # a crash never leaves half a checkpoint
        return True
