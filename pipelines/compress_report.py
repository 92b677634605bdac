"""DVC stage `compress-report@<task>`: the task's compressed models side by side (table + trade-off plots).

    python pipelines/compress_report.py experiment=digits-cnn

Any family recipe of the task will do: it sets `task` and the task's `results` block, whose headline
metric (`results.metric`) and latency (`results.latency`) the report uses (override with report.metric=...).
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.compression.report import compress_report


@hydra.main(version_base="1.3", config_path="../conf", config_name="compress_report")
def main(cfg):
    run_stage(compress_report, cfg)


if __name__ == "__main__":
    main()
