"""A runner that repeats the resumable supervised fit (dlzoo.training.supervised.fit) over further seeds and
data folds: the protocol of a small dataset, where one run's test score is too noisy to rank families and
a cross-validated score says how the model transfers (e.g. to a speaker it never heard).

The fit with the recipe's own seed and split is the family's model: its best checkpoint is the stage's
`best.ckpt`, the one the evaluate and compress stages load and MLflow logs. Every further fit is the same recipe
with one override (`seed=<s>`, or `<folds.key>=<value>`), tracked as a nested MLflow run of the stage's run, so
the UI shows them under it; its `best.ckpt` lands in `<model_dir>/runs/<name>/`. The evaluate stage scores each
of them on its own held-out split.

A killed stage (`kill -9`, a pre-empted SLURM job) started again with the same config and code resumes:
- the further fits run first, each in `<model_dir>.protocol/runs/<name>/`, outside the stage's outputs (which
  `dvc repro` deletes before it runs the stage again); a finished one leaves `done.json` there and is not
  trained again, an interrupted one continues from its last epoch (its resume point is beside it);
- the stage's MLflow run id is kept in `<model_dir>.protocol/protocol.json`, so the restart continues that run
  (tag `dlzoo.resumes`) and the further fits stay nested under it;
- the family's own fit runs last, re-seeded as the stage seeds it, so it draws what it would have drawn first;
  it resumes like any stage on that runner;
- at the end the further fits' files move into `<model_dir>/runs/` and `<model_dir>.protocol/` goes.
Points written for another config or code are discarded (the fingerprint of dlzoo.training.supervised).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from dlzoo.errors import ConfigError
from dlzoo.hardware import describe
from dlzoo.io import write_json
from dlzoo.tracking import client, ensure_experiment, flat_params, run_tags
from dlzoo.training.supervised import continue_run, fingerprint, fit
from dlzoo.training.run import RunContext

RUNS = "runs"  # sub-folder of the model dir with one folder per further fit


def protocol_runs(seeds, folds) -> dict[str, dict]:
    """{run name: {config key: value}} of the further fits: `seed-<s>` for each seed, `<value>` for each fold."""
    runs = {f"seed-{int(s)}": {"seed": int(s)} for s in (seeds or [])}
    if folds:
        if not folds.get("key") or not folds.get("values"):
            raise ConfigError("runner.folds needs `key` (the config key a fold sets) and `values`")
        for value in folds["values"]:
            runs[f"{folds.get('prefix', 'fold')}-{value}"] = {folds["key"]: value}
    return runs


def _open_child(cfg: DictConfig, parent: RunContext, name: str) -> str:
    from mlflow.entities import Param

    mlflow_client = client(parent.tracking_uri)
    experiment_id = ensure_experiment(cfg.task, cfg.tracking.artifact_root, parent.tracking_uri)
    tags = run_tags(cfg, "train", protocol_run=name, **{"mlflow.parentRunId": parent.run_id})
    run = mlflow_client.create_run(experiment_id, run_name=f"{cfg.family}-{name}", tags=tags)
    items = [Param(k, v) for k, v in {**flat_params(cfg), **describe(),
                                      "hardware/precision": str(cfg.trainer.get("precision", "32-true"))}.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def fit_runs(cfg: DictConfig, ctx: RunContext, seeds: list[int] | None = None, folds: dict | None = None) -> dict:
    """The further fits (one per seed and fold), then the recipe's own; returns the own fit's result with a
    `protocol` entry: {run name: {best_score, seconds}}."""
    import lightning as L

    runs = protocol_runs(seeds, OmegaConf.to_container(folds, resolve=True) if isinstance(folds, DictConfig) else folds)
    for name, overrides in runs.items():  # every key must exist before the first minute of training
        for key in overrides:
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(f"runner fold key {key!r} is not a key of the composed config")
    # Resolved now, once: MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI, which the tracking config reads
    # (`oc.env`), so a config resolved after the first fit would differ from the restart's, whose first fit may
    # be skipped, and the resume points' fingerprints would not match.
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    work = Path(f"{cfg.paths.model_dir}.protocol")
    code = fingerprint(cfg)
    _continue_run(work, code, ctx)
    done = {}
    for name, overrides in runs.items():
        sub = copy.deepcopy(cfg)
        for key, value in overrides.items():
            OmegaConf.update(sub, key, value, merge=False)
        sub.paths.model_dir = str(work / RUNS / name)
        sub.paths.plots_dir = f"{cfg.paths.plots_dir}/{RUNS}/{name}"
        finished = work / RUNS / name / "done.json"
        if finished.is_file():
            done[name] = json.loads(finished.read_text())
            continue
        L.seed_everything(sub.seed, workers=True, verbose=False)
        child = RunContext(sub, ctx.tracking_uri, is_main=ctx.is_main, open_run=lambda s=sub, n=name: _open_child(s, ctx, n),
                           total_epochs=cfg.trainer.get("max_epochs"))
        child.name = f"{ctx.name}[{name}]"
        try:
            sub_result = fit(sub, child)
        finally:
            if child.is_main and child.run_opened:
                status = "FINISHED" if child.history else "FAILED"
                client(ctx.tracking_uri).set_terminated(child.run_id, status)
        if not ctx.is_main:
            continue
        pd.DataFrame(child.history).to_csv(child.model_dir / "learning_curve.csv", index=False)
        done[name] = {"overrides": overrides, "best_score": sub_result["best_score"], "epochs": sub_result["epochs"],
                      "seconds": round(time.perf_counter() - child._start, 1), "run_id": child.run_id}
        write_json(finished, done[name])
    L.seed_everything(cfg.seed, workers=True, verbose=False)   # as the train stage seeds it before its runner
    result = fit(cfg, ctx)
    if ctx.is_main:
        for name in runs:
            target = ctx.model_dir / RUNS / name
            target.mkdir(parents=True, exist_ok=True)
            for f in ("best.ckpt", "learning_curve.csv"):
                shutil.copyfile(work / RUNS / name / f, target / f)
        write_json(ctx.model_dir / RUNS / "protocol.json", done)
        shutil.rmtree(work, ignore_errors=True)   # the protocol finished: a later run starts afresh
    return {**result, "protocol": {k: {kk: v[kk] for kk in ("best_score", "seconds")} for k, v in done.items()}}


def _continue_run(work: Path, code: str, ctx: RunContext) -> None:
    """Continue the MLflow run of an interrupted attempt with this config and code, or start the record of
    this one (rank 0). The folder of an attempt with another config or code is discarded."""
    if not ctx.is_main:
        return
    record = work / "protocol.json"
    meta = json.loads(record.read_text()) if record.is_file() else None
    if meta and meta.get("fingerprint") == code:
        if (Path(f"{ctx.model_dir}.resume") / "resume.json").is_file():
            return   # killed in the family's own fit: the runner resumes that fit and its run itself
        continue_run(ctx, meta["run_id"])
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(record, {"fingerprint": code, "run_id": ctx.run_id})
