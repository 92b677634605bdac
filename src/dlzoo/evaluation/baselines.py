"""Classic forecasting baselines as their own MLflow runs, so the UI's compare view lines them up
with the networks under the same `test/mae` and `test/rmse` columns."""

from __future__ import annotations

from omegaconf import DictConfig

from dlzoo.config import build, require_keys
from dlzoo.io import write_json
from dlzoo.evaluation.forecasting import baseline_forecasts, regression_metrics
from dlzoo.tracking import start_run


def evaluate_baselines(cfg: DictConfig) -> dict[str, dict]:
    require_keys(cfg, "task", "data.module")
    datamodule = build(cfg.data.module, "data.module")
    datamodule.setup("test")
    values, n_train = datamodule.values, datamodule.n_train
    forecasts = baseline_forecasts(values, n_train, datamodule.window, datamodule.season_length)
    results = {}
    for name, forecast in forecasts.items():
        metrics = {f"test/{k}": v for k, v in regression_metrics(values[n_train:], forecast).items()}
        metrics["test/num_examples"] = len(forecast)
        with start_run(cfg, "evaluate", run_name=name, family=name):
            import mlflow

            mlflow.log_params({"baseline": name, "max_lag": datamodule.window, "season_length": datamodule.season_length})
            mlflow.log_metrics(metrics)
        write_json(f"metrics/{cfg.task}/{name}.json", metrics)
        results[name] = metrics
    return results
