"""Spoken-digit classification: the leave-one-speaker-out splits, the protocol runner's further fits, the
classifier network, and a smoke train + evaluate of the recipe (seeds, speaker folds, the MFCC + SVM baseline,
the generator cross-check) on a subset of the real recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import mlflow_runs, prepare_data
from dlzoo.data.fsdd import prepare
from dlzoo.data.fsdd_classification import FSDDClassificationDataModule
from dlzoo.errors import ConfigError
from dlzoo.models.wavenet_classifier import WaveNetClassifier
from dlzoo.training.protocol import protocol_runs
from test_wavenet import link_subset

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdd")
    raw = link_subset(base / "raw", takes={0, 1, 5, 6, 7, 8})
    prepare(str(base / "out"), raw_dir=str(raw), n_samples=1024, val_per_class=1)
    return base / "out"


def keys_of(dm, split):
    a = dm.arrays[split]
    return {(int(d), int(s), c.tobytes()) for d, s, c in zip(a["digits"], a["speakers"], a["codes"])}


def test_official_split_is_the_prepared_one(prepared):
    dm = FSDDClassificationDataModule(str(prepared))
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [180, 60, 120]
    wave, digit = dm.datasets["test"][0]
    assert wave.shape == (1, 1024) and wave.dtype == torch.float32 and wave.abs().max() <= 1.0 and 0 <= digit < 10


@pytest.mark.parametrize("speaker", ["george", "yweweler"])
def test_leave_one_speaker_out_never_shows_the_speaker_before_the_test(prepared, speaker):
    dm = FSDDClassificationDataModule(str(prepared)).with_holdout(speaker)
    dm.setup()
    k = SPEAKERS.index(speaker)
    assert set(dm.arrays["test"]["speakers"]) == {k} and len(dm.datasets["test"]) == 60  # all 6 takes x 10 digits
    for split in ("train", "val"):
        assert k not in set(dm.arrays[split]["speakers"])
    official = FSDDClassificationDataModule(str(prepared))
    official.setup()
    # every other speaker's recordings are used once: the prepared validation takes validate, the rest train
    others = {key for s in ("train", "val", "test") for key in keys_of(official, s) if key[1] != k}
    assert keys_of(dm, "train") | keys_of(dm, "val") == others and not keys_of(dm, "train") & keys_of(dm, "val")
    assert keys_of(dm, "val") == {key for key in keys_of(official, "val") if key[1] != k}


def test_unknown_holdout_speaker_is_one_line_naming_the_key(prepared):
    with pytest.raises(ConfigError, match=r"data.module.holdout_speaker='ringo' is not one of") as err:
        FSDDClassificationDataModule(str(prepared), holdout_speaker="ringo").setup()
    assert "\n" not in str(err.value)


def test_training_shift_is_seeded_and_evaluation_is_not_shifted(prepared):
    dm = FSDDClassificationDataModule(str(prepared), max_shift=100)
    dm.setup()
    torch.manual_seed(3)
    a = dm.datasets["train"][4][0]
    torch.manual_seed(3)
    assert torch.equal(a, dm.datasets["train"][4][0])
    assert torch.equal(dm.datasets["test"][4][0], dm.datasets["test"].waves[4])


def test_protocol_runs_name_each_further_fit():
    runs = protocol_runs([43, 44], {"key": "data.module.holdout_speaker", "prefix": "loso", "values": ["george", "theo"]})
    assert runs == {"seed-43": {"seed": 43}, "seed-44": {"seed": 44},
                    "loso-george": {"data.module.holdout_speaker": "george"}, "loso-theo": {"data.module.holdout_speaker": "theo"}}
    with pytest.raises(ConfigError, match="runner.folds needs"):
        protocol_runs([], {"values": ["george"]})


def test_classifier_front_end_has_no_parameters_and_pools_the_whole_clip():
    torch.manual_seed(0)
    net = WaveNetClassifier(channels=8, skip_channels=8, layers_per_stack=3, stacks=1).eval()
    assert not list(net.frontend.parameters())
    assert net.receptive_field_frames == 1 + 2 * (1 + 2 + 4)
    wave = torch.randn(2, 1, 4096) * 0.1
    assert net(wave).shape == (2, 10)
    # not causal: a change at the end of the clip reaches the pooled features
    bumped = wave.clone()
    bumped[:, :, -200:] += 0.5
    with torch.no_grad():
        assert not torch.allclose(net(wave), net(bumped))
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        WaveNetClassifier(kernel_size=2)


def test_front_end_stays_float_under_graph_mode_int8():
    """The power spectrum cannot live on one int8 grid: FX sees the log-mel front end as one opaque call."""
    import torch.fx

    from dlzoo.models.wavenet_classifier import log_mel

    graph = torch.fx.symbolic_trace(WaveNetClassifier(channels=8, skip_channels=8)).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"][0] is log_mel


def test_smoke_protocol_fit_and_evaluate(workdir, make_cfg):
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.training.train import train

    raw = link_subset(workdir / "raw", takes={0, 5, 6, 7})
    gen = make_cfg("experiment=speech-fsdd-generation-wavenet", "profile=smoke", "tracking.log_model=false",
                   f"data.prepare.raw_dir={raw}")
    prepare_data(gen)
    train(gen)  # the generator whose clips the classifier labels
    cfg = make_cfg("experiment=speech-fsdd-classification-wavenet-classifier", "profile=smoke", "tracking.log_model=false",
                   f"data.prepare.raw_dir={raw}")
    summary = train(cfg)
    assert set(summary["protocol"]) == {"seed-43", "loso-george", "loso-jackson"}
    metrics = evaluate(cfg)

    on_disk = json.loads(Path(cfg.paths.metrics_file).read_text())
    assert on_disk == pytest.approx(metrics)
    assert on_disk["test/num_seeds"] == 2 and on_disk["loso/num_folds"] == 2
    assert on_disk["test/accuracy_mean"] == pytest.approx(np.mean([on_disk["test/accuracy_seed0"], on_disk["test/accuracy_seed1"]]))
    assert on_disk["test/accuracy_seed0"] == on_disk["test/accuracy"]  # the family's own model is the first seed
    assert on_disk["loso/accuracy_mean"] == pytest.approx(np.mean([on_disk["loso/accuracy_george"], on_disk["loso/accuracy_jackson"]]))
    assert 0 <= on_disk["baseline/svm_accuracy"] <= 1 and "baseline/svm_loso_accuracy_mean" in on_disk
    assert on_disk["crosscheck/num_generated"] == 10 and on_disk["crosscheck/chance"] == 0.1
    assert on_disk["crosscheck/recognised_ci_low"] <= on_disk["crosscheck/recognised"] <= on_disk["crosscheck/recognised_ci_high"]
    reports = Path(cfg.paths.reports_dir)
    table = (reports / "loso_per_speaker.csv").read_text().splitlines()
    assert table[0] == "speaker,test_recordings,network,mfcc_svm,svm_C,svm_gamma" and len(table) == 3
    assert on_disk["baseline/svm_C"] in (1.0, 100.0)   # chosen from the smoke grid by cross-validation
    assert (reports / "confusion_matrix.png").is_file() and (reports / "generated_confusion_matrix.png").is_file()

    # the further fits are nested MLflow runs of the train run, each with its own checkpoint
    runs = [r for r in mlflow_runs(workdir / "mlflow.db") if r["experiment"] == "speech-fsdd-classification"]
    assert len([r for r in runs if r["tags"]["stage"] == "train" and "protocol_run" not in r["tags"]]) == 1
    children = {r["tags"]["protocol_run"]: r for r in runs if "protocol_run" in r["tags"]}
    assert set(children) == set(summary["protocol"])
    for name, child in children.items():
        assert child["tags"]["mlflow.parentRunId"] == summary["run_id"] and child["status"] == "FINISHED"
        assert (Path(cfg.paths.model_dir) / "runs" / name / "best.ckpt").is_file()
    assert children["loso-george"]["params"]["data.module.holdout_speaker"] == "george"

    # a compress stage scores the one network: none of the protocol's numbers
    from omegaconf import OmegaConf

    from dlzoo.checkpoints import load_trained_module
    from dlzoo.config import build

    ccfg = make_cfg("experiment=speech-fsdd-classification-wavenet-classifier", "profile=smoke")
    OmegaConf.set_struct(ccfg, False)
    ccfg.compress = {"method": "static-int8"}
    module, _ = load_trained_module(ccfg)
    only, _ = build(ccfg.evaluator, "evaluator")(module, build(ccfg.data.module, "data.module"), workdir / "c")
    assert "test/accuracy" in only and not any(k.startswith(("loso/", "baseline/", "crosscheck/", "test/accuracy_mean")) for k in only)


def test_cmvn_makes_the_svm_features_deaf_to_a_speakers_loudness():
    """Per-speaker cepstral mean and variance normalisation: one speaker recorded 4x louder gives the same features."""
    from dlzoo.evaluation.speech_classification import mfcc_features

    waves = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 1, 2000)).astype(np.float32)) * 0.1
    speakers, louder = np.array([0, 0, 0, 1, 1, 1]), waves.clone()
    louder[3:] *= 4
    feats = dict(n_mfcc=13, n_fft=256, hop=64, n_mels=40)
    assert np.allclose(mfcc_features(waves, speakers, **feats), mfcc_features(louder, speakers, **feats), atol=1e-3)
    assert not np.allclose(mfcc_features(waves, speakers, **feats, cmvn=False),
                           mfcc_features(louder, speakers, **feats, cmvn=False), atol=1e-3)
