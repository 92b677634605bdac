"""DVC stage `prepare@<dataset>`: write one dataset's derived files (splits, series, vocabularies).

    python pipelines/prepare.py data=binary-addition
"""

import hydra
from hydra.utils import instantiate

from dlzoo.cli import run_stage


def prepare(cfg):
    summary = instantiate(cfg.data.prepare, out_dir=cfg.data.dir)
    print(f"prepared {cfg.data.name} in {cfg.data.dir}: {summary}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    run_stage(prepare, cfg)


if __name__ == "__main__":
    main()
