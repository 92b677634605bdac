"""DVC stage `train@<task>-<family>`: fit one recipe from conf/experiment/.

    python pipelines/train.py experiment=binary-addition-rnn [trainer=ddp] [model.net.hidden_size=32]
"""

import hydra

from dlzoo.cli import run_stage
from dlzoo.training.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    run_stage(train, cfg)


if __name__ == "__main__":
    main()
