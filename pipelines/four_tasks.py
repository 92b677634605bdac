"""DVC stage `report_shapes-four-tasks`: classification, detection, semantic and instance segmentation of the
same test images, side by side (conf/four_tasks.yaml names the families).

    python pipelines/four_tasks.py [profile=smoke]
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.evaluation.four_tasks import four_tasks


@hydra.main(version_base="1.3", config_path="../conf", config_name="four_tasks")
def main(cfg):
    run_stage(four_tasks, cfg)


if __name__ == "__main__":
    main()
