"""A runner that repeats the supervised Lightning fit (dlzoo.training.lightning.fit) over further seeds and
data folds: the protocol of a small dataset, where one run's test score is too noisy to rank families and
a cross-validated score says how the model transfers (e.g. to a speaker it never heard).

The first fit, with the recipe's own seed and split, is the family's model: its best checkpoint is the
stage's `best.ckpt`, the one the evaluate and compress stages load and MLflow logs. Every further fit is
the same recipe with one override (`seed=<s>`, or `<folds.key>=<value>`), trained into
`<model_dir>/runs/<name>/best.ckpt` and tracked as a nested MLflow run of the stage's run, so the UI shows
them under it. The evaluate stage scores each of them on its own held-out split.
"""

from __future__ import annotations

import copy
import time

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from dlzoo.errors import ConfigError
from dlzoo.hardware import describe
from dlzoo.io import write_json
from dlzoo.tracking import client, ensure_experiment, flat_params, run_tags
from dlzoo.training.lightning import fit
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
    """The recipe's fit, then one fit per further seed and fold; returns the first fit's result with a
    `protocol` entry: {run name: {overrides, best_score, epochs, seconds}}."""
    import lightning as L

    runs = protocol_runs(seeds, OmegaConf.to_container(folds, resolve=True) if isinstance(folds, DictConfig) else folds)
    for name, overrides in runs.items():  # every key must exist before the first minute of training
        for key in overrides:
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(f"runner fold key {key!r} is not a key of the composed config")
    result = fit(cfg, ctx)
    done = {}
    for name, overrides in runs.items():
        sub = copy.deepcopy(cfg)
        for key, value in overrides.items():
            OmegaConf.update(sub, key, value, merge=False)
        sub.paths.model_dir = f"{cfg.paths.model_dir}/{RUNS}/{name}"
        sub.paths.plots_dir = f"{cfg.paths.plots_dir}/{RUNS}/{name}"
        L.seed_everything(sub.seed, workers=True, verbose=False)
        child = RunContext(sub, ctx.tracking_uri, is_main=ctx.is_main, open_run=lambda s=sub, n=name: _open_child(s, ctx, n),
                           total_epochs=cfg.trainer.get("max_epochs"))
        child.name = f"{ctx.name}[{name}]"
        start = time.perf_counter()
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
                      "seconds": round(time.perf_counter() - start, 1), "run_id": child.run_id}
    if ctx.is_main:
        write_json(ctx.model_dir / RUNS / "protocol.json", done)
    return {**result, "protocol": {k: {kk: v[kk] for kk in ("best_score", "seconds")} for k, v in done.items()}}
