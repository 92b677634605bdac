"""DVC stage `compress@<task>-<family>-<method>`: compress a trained family, measure it, record it.

    python pipelines/compress.py experiment=digits-cnn compress=static-int8 [compress.apply.calibration_batches=4]
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.compression.compress import compress


@hydra.main(version_base="1.3", config_path="../conf", config_name="compression")
def main(cfg):
    run_stage(compress, cfg)


if __name__ == "__main__":
    main()
