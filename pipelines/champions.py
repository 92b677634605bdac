"""DVC stage `champions`: each task's best family (the recipes' headline metric) becomes `models:/<task>-<family>@champion`.

    python pipelines/champions.py
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.tracking.champions import champions


@hydra.main(version_base="1.3", config_path="../conf", config_name="champions")
def main(cfg):
    run_stage(champions, cfg)


if __name__ == "__main__":
    main()
