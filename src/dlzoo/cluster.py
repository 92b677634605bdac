"""What the SLURM launcher (conf/hydra/launcher/slurm.yaml) adds to Hydra's submitit launcher.

- The resolver `dlzoo_gpus_per_node`: the GPU request follows the trainer (`devices` GPUs per node when
  `accelerator` is a GPU one, none for CPU trainers), so `trainer=gpu`/`ddp`/`fsdp` ask SLURM for what they use.
- `SlurmRunTags`, a Hydra callback: after each job, the MLflow run that job created gets the SLURM job id,
  array task and node list as tags, so a run in the UI leads to its `sacct` row and its logs.
- `TrackingStoreReady`, a Hydra callback: before a sweep's jobs start at once, the launching process creates
  the tracking store's tables and each job's MLflow experiment. Concurrent jobs on a fresh SQLite store
  otherwise race to create both (one of 8 failed with a UNIQUE-constraint error when tried); once they
  exist, the jobs only add runs, which SQLite serialises.

Hydra instantiates callbacks in the launching process before the launcher resolves its settings, which is
what registers the resolver in time; the stage code itself never imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda")
# SLURM's environment -> MLflow tag, for the variables a user looks a job up by.
SLURM_TAGS = {
    "SLURM_JOB_ID": "slurm.job_id",
    "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
    "SLURM_ARRAY_TASK_ID": "slurm.array_task_id",
    "SLURM_JOB_NODELIST": "slurm.nodelist",
    "SLURM_RESTART_COUNT": "slurm.restart_count",
    "SLURM_CLUSTER_NAME": "slurm.cluster",
}


def gpus_per_node(accelerator, devices) -> int | None:
    """GPUs to request per node: the trainer's `devices` for a GPU accelerator, else none."""
    if str(accelerator).lower() not in GPU_ACCELERATORS:
        return None
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"trainer.devices must be a GPU count to request GPUs from SLURM, not {devices!r}")
    return devices


if not OmegaConf.has_resolver("dlzoo_gpus_per_node"):
    OmegaConf.register_new_resolver("dlzoo_gpus_per_node", gpus_per_node)


def slurm_tags(environ=os.environ) -> dict[str, str]:
    return {tag: environ[var] for var, tag in SLURM_TAGS.items() if environ.get(var)}


class TrackingStoreReady(Callback):
    """Create the store and every experiment (task) the sweep's jobs will log to, before they start."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra import compose
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from dlzoo.tracking import ensure_experiment, resolve_tracking_uri

        experiments = [None]  # None: the base config's own experiment
        for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
            if override.key_or_group == "experiment":
                experiments = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        # The store and artifact root as this command line sets them (e.g. tracking.artifact_root=null for a
        # server); each swept experiment is composed only for its task name.
        uri, artifact_root = resolve_tracking_uri(config.tracking.uri), config.tracking.artifact_root
        for experiment in experiments:
            job_cfg = config if experiment is None else compose(config.hydra.job.config_name, overrides=[f"experiment={experiment}"])
            if OmegaConf.select(job_cfg, "task") is not None:
                ensure_experiment(job_cfg.task, artifact_root, uri)


class SlurmRunTags(Callback):
    """Tag the job's MLflow run (the run id its train stage wrote to train_summary.json) with SLURM's ids.

    Only a summary written during this job counts: a failed job must not tag an earlier run's."""

    def on_job_start(self, config, **kwargs) -> None:
        self._started = time.time()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        tags = slurm_tags()
        if "slurm.job_id" not in tags:
            return  # not inside a SLURM job (e.g. the local launcher)
        summary = Path(config.paths.model_dir) / "train_summary.json"
        try:
            if summary.stat().st_mtime < getattr(self, "_started", 0.0):
                raise ValueError("written before this job")
            run_id = json.loads(summary.read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            log.warning("no MLflow run to tag with SLURM job %s: %s has no run id", tags["slurm.job_id"], summary)
            return
        from dlzoo.tracking import client, resolve_tracking_uri

        mlflow_client = client(resolve_tracking_uri(config.tracking.uri))
        for key, value in tags.items():
            mlflow_client.set_tag(run_id, key, value)
