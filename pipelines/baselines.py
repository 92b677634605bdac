"""DVC stage `evaluate@<task>-baselines`: the classic forecasting baselines on the same held-out split.

    python pipelines/baselines.py experiment=timeseries-sunspots-baselines
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.evaluation.baselines import evaluate_baselines


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    run_stage(evaluate_baselines, cfg)


if __name__ == "__main__":
    main()
