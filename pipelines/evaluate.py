"""DVC stage `evaluate@<task>-<family>`: score the trained checkpoint on held-out data.

    python pipelines/evaluate.py experiment=binary-addition-rnn [checkpoint_path=PATH]
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.evaluation.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    run_stage(evaluate, cfg)


if __name__ == "__main__":
    main()
