"""The Hydra config tree: every recipe composes, and the comparisons it promises are fair."""


import pytest
from omegaconf import OmegaConf

from conftest import CONF

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("profile", ["smoke", "cpu", "full"])
def test_every_recipe_composes(make_cfg, experiment, profile):
    cfg = make_cfg(f"experiment={experiment}", f"profile={profile}")
    assert cfg.experiment_name == experiment == f"{cfg.task}-{cfg.family}"
    assert cfg.profile_name == profile
    OmegaConf.resolve(cfg)  # no dangling interpolation
    if profile == "full":
        assert cfg.trainer.accelerator == "gpu"


@pytest.mark.parametrize("dataset", ["sine", "sunspots"])
def test_recurrent_families_share_data_and_budget(make_cfg, dataset):
    cfgs = {c: make_cfg(f"experiment=timeseries-{dataset}-{c}") for c in ("rnn", "lstm", "gru")}
    plain = {}
    for cell, cfg in cfgs.items():
        d = OmegaConf.to_container(cfg, resolve=True)
        assert d["model"]["net"].pop("cell") == cell
        for key in ("family", "experiment_name", "paths"):
            d.pop(key)
        d["trainer"].pop("default_root_dir")  # = paths.model_dir, per family by design
        plain[cell] = d
    assert plain["rnn"] == plain["lstm"] == plain["gru"]


def test_trainer_choices_compose(make_cfg):
    ddp = make_cfg("experiment=binary-addition-rnn", "trainer=ddp")
    assert ddp.trainer.devices == 2 and ddp.trainer.strategy.process_group_backend == "gloo"
    assert make_cfg("experiment=binary-addition-rnn", "trainer=gpu", "trainer.precision=16-mixed").trainer.precision == "16-mixed"
    assert "FSDPStrategy" in make_cfg("experiment=binary-addition-rnn", "trainer=fsdp").trainer.strategy._target_


def test_slurm_launcher_config_composes():
    """`-m hydra/launcher=slurm` sends the same jobs to SLURM through submitit (hydra-submitit-launcher)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=binary-addition-rnn", "hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 2
    GlobalHydra.instance().clear()


def test_tracking_uri_defaults_to_sqlite_and_env_overrides(make_cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert make_cfg("experiment=binary-addition-rnn").tracking.uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert make_cfg("experiment=binary-addition-rnn").tracking.uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize("native,expected", [("1", "bf16-mixed"), ("0", "32-true")])
def test_precision_auto_follows_the_cpu(make_cfg, monkeypatch, native, expected):
    """`precision: auto` is bf16 autocast only where the CPU computes bf16 natively; elsewhere (e.g. AVX2-only
    EPYCs, where bf16 is emulated and convolutions run many times slower) float32."""
    from dlzoo.hardware import resolve_precision
    from dlzoo.training.trainer import build_trainer

    monkeypatch.setenv("DLZOO_CPU_BF16", native)
    cfg = make_cfg("experiment=translation-en-ja-transformer")
    assert cfg.trainer.precision == "auto"
    assert resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator) == expected
    trainer = build_trainer(make_cfg("experiment=segmentation-shapes-unet", "profile=smoke").trainer, logger=False)
    assert str(trainer.precision) == expected
    assert resolve_precision("32-true", "cpu") == "32-true"  # an explicit choice is kept as given


def test_make_repro_profile_full_trains_on_the_gpu_trainer():
    """params.yaml's `trainer: cpu` reaches every train stage's command line, where it beats the full profile's
    own `trainer: gpu`; `make repro PROFILE=full` therefore sets the trainer param too (TRAINER= overrides)."""
    import subprocess

    from conftest import REPO, compose_config

    def dry(*args: str) -> str:
        out = subprocess.run(["make", "-n", "repro", *args], cwd=REPO, capture_output=True, text=True, check=True)
        return next(line for line in out.stdout.splitlines() if " dvc exp run " in line or " dvc repro" in line)

    assert "--set-param profile=full --set-param trainer=gpu" in dry("PROFILE=full")
    assert "--set-param trainer=fsdp" in dry("PROFILE=full", "TRAINER=fsdp")
    assert "trainer=" not in dry("PROFILE=smoke")
    # the launcher param on its own, or with a profile (docs/cluster.md)
    assert dry("LAUNCHER=slurm").endswith(" dvc exp run --set-param launcher=slurm")
    assert dry("PROFILE=smoke", "LAUNCHER=slurm", "TARGETS=train_digits-cnn").endswith(
        " dvc exp run --set-param profile=smoke --set-param launcher=slurm train_digits-cnn")
    assert "launcher" not in dry("PROFILE=smoke") and dry().rstrip().endswith(" dvc repro")
    # the full profile's own stages (profiles/full/dvc.yaml) join the default pipeline; no other profile has any
    assert dry("PROFILE=full").endswith(" dvc.yaml profiles/full/dvc.yaml")
    assert "profiles/" not in dry("PROFILE=smoke") and "profiles/" not in dry("PROFILE=full", "TARGETS=evaluate_digits-cnn")
    assert compose_config("experiment=digits-cnn", "profile=full", "trainer=cpu").trainer.accelerator == "cpu"
    assert compose_config("experiment=digits-cnn", "profile=full", "trainer=gpu").trainer.accelerator == "gpu"
