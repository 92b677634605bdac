"""Semantic segmentation (U-Net on the COCO shapes): the net, the mIoU definition, the evaluator,
and a smoke fit + evaluate through the generic entry points."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import mlflow_runs, prepare_data
from dlzoo.data.coco import CocoDataModule
from dlzoo.data.shapes import prepare
from dlzoo.errors import ConfigError
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.evaluation.segmentation import evaluate as evaluate_segmentation
from dlzoo.models.unet import SegmentationModule, UNet, soft_dice_loss
from dlzoo.training.train import train

TINY = ("data.prepare.n_train=8", "data.prepare.n_val=4", "data.prepare.n_test=4", "data.prepare.image_size=64")
KEYS = {"test/miou", "test/iou/background", "test/iou/circle", "test/iou/square", "test/iou/triangle",
        "test/pixel_accuracy", "test/num_examples"}


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 31)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_unet_keeps_the_input_size(size, channels_last):
    torch.manual_seed(0)
    net = UNet(in_channels=3, num_classes=4, channels=(4, 8, 16), norm="group", channels_last=channels_last)
    x = torch.rand(2, 3, *size)
    out = net(x)
    assert out.shape == (2, 4, *size)
    out.sum().backward()  # the skips carry gradient to the first layer
    assert net.down[0][0][0].weight.grad.abs().sum() > 0


def test_unet_rejects_a_single_level():
    with pytest.raises(ConfigError, match="at least 2 levels"):
        UNet(channels=(8,))


def test_miou_matches_a_hand_computed_case():
    from torchmetrics.classification import MulticlassJaccardIndex

    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])
    # class 0: |P∩T| = 2 ({0,0},{1,0}), |P∪T| = 5 -> 2/5; class 1: 2 of 4 -> 1/2; class 2: 1 of 2 -> 1/2
    expected = torch.tensor([2 / 5, 1 / 2, 1 / 2, 0.0])  # class 3 occurs in neither: 0, left out of the mean
    per_class = MulticlassJaccardIndex(4, average="none")(pred, target)
    assert torch.allclose(per_class, expected)
    miou = MulticlassJaccardIndex(4, average="macro")(pred, target)
    assert miou == pytest.approx((2 / 5 + 1 / 2 + 1 / 2) / 3)


def test_soft_dice_is_zero_for_a_confident_correct_prediction():
    target = torch.tensor([[[0, 1], [2, 3]]])
    perfect = 50.0 * torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, target) == pytest.approx(0.0, abs=1e-4)
    assert soft_dice_loss(-perfect, target) > 0.5


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    prepare(str(out), image_size=64, n_train=4, n_val=2, n_test=5, seed=1)
    return out


def test_evaluator_returns_the_metrics_and_plots_for_an_untrained_model(tiny_shapes, tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(UNet(channels=(4, 8)), optimizer=None, num_classes=4)
    datamodule = CocoDataModule(str(tiny_shapes), task="segmentation", batch_size=2)
    metrics, files = evaluate_segmentation(module, datamodule, tmp_path / "reports", num_classes=4, n_examples=3)
    assert set(metrics) == KEYS
    assert metrics["test/num_examples"] == 5
    assert all(0.0 <= metrics[k] <= 1.0 for k in KEYS - {"test/num_examples"})
    assert [f.name for f in files] == ["segmentations.png", "iou_per_class.png"]
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)


def test_evaluator_refuses_a_class_count_the_data_does_not_have(tiny_shapes, tmp_path):
    module = SegmentationModule(UNet(num_classes=6, channels=(4, 8)), optimizer=None, num_classes=6)
    datamodule = CocoDataModule(str(tiny_shapes), task="segmentation", batch_size=2)
    with pytest.raises(ConfigError, match="num_classes=6"):
        evaluate_segmentation(module, datamodule, tmp_path, num_classes=6)


def test_recipe_composes_to_a_segmentation_setup(make_cfg):
    cfg = make_cfg("experiment=segmentation-shapes-unet")
    assert (cfg.task, cfg.family, cfg.data.module.task) == ("segmentation-shapes", "unet", "segmentation")
    assert (cfg.checkpoint.monitor, cfg.checkpoint.mode) == ("val/miou", "max")
    assert cfg.evaluator.num_classes == cfg.model.num_classes == cfg.model.net.num_classes == 4
    module = instantiate(cfg.model)
    assert isinstance(module, SegmentationModule) and isinstance(module.net, UNet)


def test_smoke_fit_and_evaluate(workdir, make_cfg):
    cfg = make_cfg("experiment=segmentation-shapes-unet", "profile=smoke", "tracking.log_model=false", *TINY)
    prepare_data(cfg)
    summary = train(cfg)
    assert Path(summary["checkpoint"]).is_file() and summary["monitor"] == "val/miou"
    metrics = evaluate(cfg)

    on_disk = json.loads(Path(cfg.paths.metrics_file).read_text())
    assert on_disk == pytest.approx(metrics)
    assert KEYS <= set(on_disk) and on_disk["num_params"] > 0 and on_disk["test/num_examples"] == 4

    runs = {r["tags"]["stage"]: r for r in mlflow_runs(workdir / "mlflow.db")}
    assert set(runs) == {"train", "evaluate"}
    assert all(r["experiment"] == "segmentation-shapes" and r["name"] == "unet" for r in runs.values())
    assert {"train/loss", "val/loss", "val/miou"} <= set(runs["train"]["metrics"])
    assert runs["evaluate"]["metrics"]["test/miou"] == pytest.approx(on_disk["test/miou"])
    assert (Path(cfg.paths.reports_dir) / "segmentations.png").is_file()
    assert (Path(cfg.paths.plots_dir) / "learning_curve.png").is_file()
