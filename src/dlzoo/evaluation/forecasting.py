"""Forecasting metrics (MAE, RMSE on the original scale) and the classic baselines the networks
must beat, all computed on exactly the same held-out targets.

Baselines (one-step-ahead, each using only values before the target's time):
- naive: the last observed value;
- seasonal naive: the value one season ago (when the data config gives a season length);
- AR(p): statsmodels' AutoReg fitted on the training part, p chosen by AIC up to the window size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlzoo.evaluation.plots import plot_forecast


def regression_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def ar_forecast(values: np.ndarray, n_train: int, max_lag: int) -> tuple[np.ndarray, int]:
    """One-step-ahead AR predictions for targets n_train.. (lag order chosen by AIC on the training part)."""
    from statsmodels.tsa.ar_model import AutoReg, ar_select_order

    train = values[:n_train]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lags = ar_select_order(train, maxlag=max_lag, ic="aic", trend="c").ar_lags or [1]
        fitted = AutoReg(train, lags=lags, trend="c").fit()
        # Same coefficients applied to the whole series: predictions use the true past values.
        full = fitted.apply(values, refit=False)
        pred = full.predict(start=n_train, end=len(values) - 1)
    return np.asarray(pred), int(max(lags))


def baseline_forecasts(values: np.ndarray, n_train: int, max_lag: int, season_length: int | None) -> dict[str, np.ndarray]:
    targets = np.arange(n_train, len(values))
    forecasts = {"naive": values[targets - 1]}
    if season_length:
        forecasts["seasonal-naive"] = values[targets - season_length]
    forecasts["ar"], _ = ar_forecast(values, n_train, max_lag)
    return forecasts


@torch.no_grad()
def predict_test(module, datamodule) -> np.ndarray:
    module.eval()
    z = torch.cat([module(x) for x, _ in datamodule.test_dataloader()]).numpy()
    return datamodule.inverse_transform(z)


def evaluate(module, datamodule, out_dir: str | Path) -> tuple[dict, list[Path]]:
    """Test-part MAE/RMSE of the network next to the baselines, plus a predictions-vs-truth plot."""
    datamodule.setup("test")
    values, n_train = datamodule.values, datamodule.n_train
    truth = values[n_train:]
    pred = predict_test(module, datamodule)
    baselines = baseline_forecasts(values, n_train, datamodule.window, datamodule.season_length)

    ours = regression_metrics(truth, pred)
    metrics = {f"test/{k}": v for k, v in ours.items()}
    for name, forecast in baselines.items():
        for k, v in regression_metrics(truth, forecast).items():
            metrics[f"baseline/{name}/{k}"] = v
    # Ratios < 1 mean the network beats the baseline on held-out MAE.
    metrics["test/mae_vs_naive"] = ours["mae"] / metrics["baseline/naive/mae"]
    metrics["test/mae_vs_ar"] = ours["mae"] / metrics["baseline/ar/mae"]
    metrics["test/num_examples"] = int(len(truth))

    out_dir = Path(out_dir)
    t = datamodule.t
    table = pd.DataFrame({"t": t[n_train:], "truth": truth, "model": pred, **baselines})
    table_path = out_dir / "predictions.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(table_path, index=False)
    plot = plot_forecast(
        t[n_train:], truth, {"model": pred, "naive": baselines["naive"], "ar": baselines["ar"]},
        out_dir / "predictions.png", title="one-step-ahead forecasts on the held-out part",
        history=(t[max(0, n_train - 3 * len(truth)) : n_train], values[max(0, n_train - 3 * len(truth)) : n_train]),
    )
    return metrics, [table_path, plot]
