import numpy as np
import pandas as pd
import pytest

from dlzoo.data.timeseries import ForecastDataModule, make_windows, prepare_sine, prepare_sunspots
from dlzoo.errors import ConfigError, DataError
from dlzoo.evaluation.forecasting import ar_forecast, baseline_forecasts, regression_metrics


def test_windows_pair_each_target_with_its_past():
    values = np.arange(10.0)
    x, y = make_windows(values, 3, range(3, 10))
    assert x.shape == (7, 3, 1)
    assert x[0, :, 0].tolist() == [0, 1, 2] and y[0] == 3
    assert x[-1, :, 0].tolist() == [6, 7, 8] and y[-1] == 9
    with pytest.raises(ConfigError):
        make_windows(values, 5, range(2, 10))


def test_prepare_holds_out_the_end_in_time_order(tmp_path):
    summary = prepare_sine(str(tmp_path), n_points=500, test_fraction=0.2, seed=1)
    df = pd.read_csv(tmp_path / "series.csv")
    assert summary["n_test"] == 100 and (df["split"].iloc[-100:] == "test").all() and (df["split"].iloc[:400] == "train").all()
    assert df["t"].is_monotonic_increasing


def test_sunspots_come_from_statsmodels(tmp_path):
    summary = prepare_sunspots(str(tmp_path))
    df = pd.read_csv(tmp_path / "series.csv")
    assert summary["n_points"] == 309 and df["t"].iloc[0] == 1700 and df["t"].iloc[-1] == 2008


def test_datamodule_never_leaks_test_values_into_training(tmp_path):
    prepare_sine(str(tmp_path), n_points=400, test_fraction=0.25)
    dm = ForecastDataModule(str(tmp_path), window=10, val_fraction=0.2)
    dm.setup()
    assert max(dm.ranges["train"]) < min(dm.ranges["val"]) <= max(dm.ranges["val"]) < min(dm.ranges["test"])
    assert min(dm.ranges["test"]) == dm.n_train == 300
    # scaling statistics from the training part only
    assert dm.mean == pytest.approx(dm.values[:300].mean())
    x, y = dm.datasets["test"][0]
    assert float(y) == pytest.approx((dm.values[300] - dm.mean) / dm.std, rel=1e-5)
    assert dm.inverse_transform(np.array([float(y)]))[0] == pytest.approx(dm.values[300], rel=1e-5)


def test_too_short_series_is_a_clear_error(tmp_path):
    prepare_sine(str(tmp_path), n_points=40, test_fraction=0.2)
    with pytest.raises(DataError, match="no windows"):
        ForecastDataModule(str(tmp_path), window=30).setup()


def test_missing_prepared_data_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="dvc repro"):
        ForecastDataModule(str(tmp_path / "nowhere")).setup()


def test_baselines_on_hand_checked_series():
    values = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    fc = baseline_forecasts(values, n_train=8, max_lag=2, season_length=4)
    assert fc["naive"].tolist() == [8, 9, 10, 11]
    assert fc["seasonal-naive"].tolist() == [5, 6, 7, 8]
    # an AR model fitted on a straight line continues it
    assert np.allclose(fc["ar"], [9, 10, 11, 12], atol=1e-6)
    assert regression_metrics([1, 2], [2, 4]) == {"mae": 1.5, "rmse": pytest.approx((2.5) ** 0.5)}


def test_ar_recovers_a_known_ar1_process():
    rng = np.random.default_rng(0)
    x = np.zeros(3000)
    for t in range(1, len(x)):
        x[t] = 0.8 * x[t - 1] + rng.normal()
    pred, lag = ar_forecast(x, 2500, max_lag=5)
    assert lag >= 1
    assert regression_metrics(x[2500:], pred)["rmse"] == pytest.approx(1.0, abs=0.1)
