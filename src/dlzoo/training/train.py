"""The train stage's driver, the same for every family: config -> MLflow run -> the recipe's runner ->
checkpoint, learning curves, summary, logged model.

What differs between families lives in their recipe (`runner`, `data`, `model`, `trainer`); the services
here (tracking, tags, hardware choices, curves, summary) are what every runner gets (dlzoo.training.run).
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig, OmegaConf

from dlzoo.config import build, require_keys
from dlzoo.hardware import describe, resolve_precision
from dlzoo.io import write_json
from dlzoo.tracking import client, ensure_experiment, flat_params, resolve_tracking_uri, run_tags
from dlzoo.training.run import RunContext
from dlzoo.training.trainer import check_trainer_config

log = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def train(cfg: DictConfig) -> dict:
    """Run the recipe's runner inside a tracked run; return the summary written to train_summary.json."""
    require_keys(cfg, "task", "family", "runner")
    check_trainer_config(cfg.trainer)  # before any run or file is created
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    runner = build(cfg.runner, "runner")
    precision = resolve_precision(cfg.trainer.get("precision", "32-true"), str(cfg.trainer.get("accelerator", "cpu")))
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    ctx = RunContext(cfg, tracking_uri, is_main=_is_rank_zero(), open_run=lambda: _open_run(cfg, tracking_uri, precision),
                     total_epochs=cfg.trainer.get("max_epochs"))
    start = time.perf_counter()
    try:
        result = runner(cfg, ctx)
    except BaseException:
        _close_run(ctx, "FAILED")
        raise
    if not ctx.is_main:
        return {}
    model, example = result.pop("model", None), result.pop("example", None)
    summary = {"run_id": ctx.run_id, "task": cfg.task, "family": cfg.family, "experiment": cfg.experiment_name,
               "monitor": ctx.monitor, "train_seconds": round(time.perf_counter() - start, 1), **result}
    if model is not None:
        from dlzoo.models import count_parameters

        summary["num_params"] = count_parameters(model)
        ctx.log_metrics({"num_params": summary["num_params"]})
    write_json(ctx.model_dir / "train_summary.json", summary)
    (ctx.model_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    _log_train_artifacts(cfg, ctx, model, example)
    _close_run(ctx, "FINISHED")
    log.info("trained %s: best %s = %s", cfg.experiment_name, ctx.monitor, summary.get("best_score"))
    return summary


def _open_run(cfg: DictConfig, tracking_uri: str, precision: str) -> str:
    """Create the run every runner logs into, with the standard tags and the resolved config as params."""
    from mlflow.entities import Param

    mlflow_client = client(tracking_uri)
    experiment_id = ensure_experiment(cfg.task, cfg.tracking.artifact_root, tracking_uri)
    run = mlflow_client.create_run(experiment_id, run_name=cfg.family, tags=run_tags(cfg, "train"))
    params = {**flat_params(cfg), **describe(), "hardware/precision": precision}
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def _close_run(ctx: RunContext, status: str) -> None:
    if ctx.is_main and ctx.run_opened:
        mlflow_client = client(ctx.tracking_uri)
        if mlflow_client.get_run(ctx.run_id).info.status == "RUNNING":
            mlflow_client.set_terminated(ctx.run_id, status)


def _log_train_artifacts(cfg: DictConfig, ctx: RunContext, model, example) -> None:
    """Learning curves, resolved config, best checkpoint and the registered model, in the train run."""
    import mlflow
    import pandas as pd

    from dlzoo.plotting import plot_learning_curves  # matplotlib only once there is a curve to draw

    curve_csv = ctx.plots_dir / "learning_curve.csv"
    curve_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(ctx.history).to_csv(curve_csv, index=False)
    curve_png = plot_learning_curves(curve_csv, ctx.plots_dir / "learning_curve.png", title=f"{cfg.task} / {cfg.family}")
    mlflow.set_tracking_uri(ctx.tracking_uri)
    with mlflow.start_run(run_id=ctx.run_id):
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        mlflow.log_artifact(str(curve_csv), "plots")
        mlflow.log_artifact(str(curve_png), "plots")
        if ctx.checkpoint_path.exists():
            mlflow.log_artifact(str(ctx.checkpoint_path), "checkpoints")
        if model is not None and cfg.tracking.log_model:
            _log_model(cfg, model, example)


def _log_model(cfg: DictConfig, model, example) -> None:
    """The bare nn.Module with the best weights, a signature and an input example."""
    import mlflow
    import torch

    net = getattr(model, "net", model).eval()
    with torch.no_grad():
        output = net(example)
    # Tensor-in/tensor-out models get a signature; structured outputs (detections) are logged without.
    tensor_io = isinstance(example, torch.Tensor) and isinstance(output, torch.Tensor)
    signature = mlflow.models.infer_signature(example.numpy(), output.numpy()) if tensor_io else None
    register_as = f"{cfg.task}-{cfg.family}" if cfg.tracking.register_model else None
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    # "pt2" (torch.export: a graph, no pickled code) needs a tensor example to trace; nets with
    # structured outputs (detectors), data-dependent loops (translators' decoding; their deployable
    # form is the TorchScript export of the evaluate stage) and any net torch.export cannot trace are pickled.
    if tensor_io and getattr(model, "mlflow_serialization", "pt2") == "pt2":
        try:
            mlflow.pytorch.log_model(net, name="model", signature=signature, input_example=example.numpy(),
                                     serialization_format="pt2", registered_model_name=register_as,
                                     pip_requirements=requirements)
            return
        except Exception as exc:  # torch.export raises many types; the pickle below still logs the model
            log.warning("torch.export could not save %s (%s); logging it pickled", cfg.family, str(exc)[:200])
    # a pickle names the project's classes: `src/dlzoo` goes with it, and the requirements are what its modules import
    from dlzoo.tracking.requirements import PACKAGE_DIR, pickled_requirements

    mlflow.pytorch.log_model(net, name="model", signature=signature, serialization_format="pickle",
                             registered_model_name=register_as, pip_requirements=pickled_requirements(net),
                             code_paths=[str(PACKAGE_DIR)])
