"""Instance segmentation (task instance-shapes): instance masks from COCO polygons or RLE, their bad-input errors,
COCO mask mAP on known answers, the Mask R-CNN net and a smoke fit + evaluate through the entry points."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.transforms import v2

from conftest import mlflow_runs, prepare_data
from dlzoo.data.coco import polygons_mask
from dlzoo.data.coco_instance import CocoInstanceDataModule, CocoInstanceDataset
from dlzoo.errors import DataError
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.evaluation.instance import coco_scores
from dlzoo.evaluation.instance import evaluate as evaluate_instances
from dlzoo.training.train import train

TINY = ["data.prepare.n_train=8", "data.prepare.n_val=4", "data.prepare.n_test=4", "data.prepare.image_size=64",
        "model.net.size=64"]
SQUARE = [4.0, 4.0, 24.0, 4.0, 24.0, 24.0, 4.0, 24.0]
TRIANGLE = [30.0, 40.0, 60.0, 40.0, 45.0, 12.0]


def _folder(root: Path, segmentations: list, size=(64, 48)) -> tuple[str, str]:
    """One image (width, height = size) with one annotation per segmentation (None: no key), all of category 7."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(root / "images" / "a.png")
    anns = [{"id": 10 + k, "image_id": 1, "category_id": 7, "bbox": [1.0, 1.0, 20.0, 20.0]}
            | ({} if seg is None else {"segmentation": seg}) for k, seg in enumerate(segmentations)]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
            "annotations": anns, "categories": [{"id": 7, "name": "thing"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return str(root / "annotations.json"), str(root / "images")


def _module(json_path: str, images: str) -> CocoInstanceDataModule:
    return CocoInstanceDataModule("unused", batch_size=2, test_json=json_path, test_images=images)


# ----------------------------------------------------------------------------------- masks from COCO


def test_rle_and_polygon_give_the_same_mask(tmp_path):
    h, w = 48, 64
    truth = polygons_mask([SQUARE, TRIANGLE], h, w)
    compressed = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()  # as JSON stores it
    # uncompressed RLE: run lengths in column-major order, starting with a run of zeros
    flat = truth.T.reshape(-1).astype(np.int64)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    segs = [[SQUARE, TRIANGLE], compressed, {"size": [h, w], "counts": counts}]
    ds = CocoInstanceDataset(*_folder(tmp_path, segs))
    _, target = ds[0]
    assert target["masks"].shape == (3, h, w) and target["masks"].dtype == torch.uint8
    assert truth.sum() > 300
    for mask in target["masks"]:
        assert np.array_equal(mask.numpy().astype(bool), truth)


BAD = {
    "polygon of 2 points": ([[1.0, 1.0, 10.0, 10.0]], r"ids 10\b"),
    "RLE of the wrong size": ({"size": [32, 32], "counts": [0, 1024]}, r"RLE size is not their image's.*ids 10 \(size \[32, 32\], image 48x64\)"),
    "polygon outside the image": ([[40.0, 4.0, 90.0, 4.0, 60.0, 30.0]], r"polygon points outside their image.*ids 10\b"),
    "no segmentation": (None, r"without a segmentation.*ids 10\b"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_masks_are_one_line_errors_naming_the_annotation(case, tmp_path):
    seg, match = BAD[case]
    datamodule = _module(*_folder(tmp_path, [seg]))
    with pytest.raises(DataError, match=match) as info:
        datamodule.setup("test")
    assert "\n" not in str(info.value) and "annotations.json" in str(info.value)


def test_prepared_shapes_give_one_full_mask_per_object(shapes):
    root, _ = shapes
    datamodule = CocoInstanceDataModule(str(root), batch_size=4)
    datamodule.setup("fit")
    coco = json.loads((root / "train" / "annotations.json").read_text())
    image, target = datamodule.datasets["train"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    assert len(target["masks"]) == len(target["boxes"]) == len(anns)
    h, w = image.shape[-2:]
    for mask, ann in zip(target["masks"], anns):  # the amodal outline, also where a later shape covers it
        assert np.array_equal(mask.numpy().astype(bool), polygons_mask(ann["segmentation"], h, w))
    images, targets = next(iter(datamodule.train_dataloader()))
    assert images.shape[0] == 4 and all("masks" in t for t in targets)


def test_flips_move_masks_with_their_boxes():
    image = torch.zeros(3, 8, 10)
    masks = torch.zeros(1, 8, 10, dtype=torch.uint8)
    masks[0, 1:3, 0:4] = 1
    target = {"boxes": torch.tensor([[0.0, 1.0, 4.0, 3.0]]), "labels": torch.tensor([1]), "masks": masks,
              "crowd_masks": torch.zeros(0, 8, 10, dtype=torch.uint8)}
    flips = SimpleNamespace(transforms=v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomVerticalFlip(p=1.0)]))
    _, flipped = CocoInstanceDataset.augment(flips, image, target)
    assert flipped["masks"].dtype == torch.uint8 and flipped["crowd_masks"].shape == (0, 8, 10)
    ys, xs = torch.nonzero(flipped["masks"][0], as_tuple=True)
    assert flipped["boxes"].tolist() == [[6.0, 5.0, 10.0, 7.0]]
    assert (xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1) == (6, 10, 5, 7)


# ----------------------------------------------------------------------------------- COCO mask AP


def _truth(n: int = 3, size: int = 32):
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = []
    for k in range(n):
        x0 = 2 + 9 * k
        masks[k, 4:12, x0:x0 + 7] = True
        boxes.append([x0, 4, x0 + 7, 12])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2, 1]), "masks": masks,
            "iscrowd": torch.zeros(n, dtype=torch.int64)}


def test_a_perfect_prediction_scores_mask_map_one():
    truth = _truth()
    pred = {"boxes": truth["boxes"], "labels": truth["labels"], "masks": truth["masks"], "scores": torch.ones(3)}
    metrics = coco_scores([pred], [truth], ["background", "a", "b"])
    assert metrics["test/segm_map"] == pytest.approx(1.0) and metrics["test/segm_map_50"] == pytest.approx(1.0)
    assert metrics["test/segm_ap/a"] == pytest.approx(1.0) and metrics["test/bbox_map"] == pytest.approx(1.0)


def test_mask_map_judges_the_masks_not_the_boxes():
    """Exact boxes with masks shifted off their objects (IoU < 0.5): box AP stays 1, mask AP falls to 0."""
    truth = _truth()
    shifted = truth["masks"].roll(5, dims=1)
    pred = {"boxes": truth["boxes"], "labels": truth["labels"], "masks": shifted, "scores": torch.ones(3)}
    metrics = coco_scores([pred], [truth], ["background", "a", "b"])
    assert metrics["test/bbox_map"] == pytest.approx(1.0) and metrics["test/segm_map_50"] == pytest.approx(0.0)


def test_evaluator_scores_an_oracle_one_and_draws_the_instances(workdir, make_cfg):
    cfg = make_cfg("experiment=instance-shapes-maskrcnn", *TINY)
    prepare_data(cfg)
    datamodule = instantiate(cfg.data.module)
    datamodule.setup("test")
    truth = [t for _, t in datamodule.datasets["test"]]

    class Oracle(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                     "masks": t["masks"][:, None].float()} for t in truth[: len(images)]]

    datamodule.batch_size = 64  # one batch, so the oracle's order is the test order
    metrics, files = evaluate_instances(Oracle(), datamodule, workdir / "reports")
    assert metrics["test/segm_map"] == pytest.approx(1.0) and metrics["test/bbox_map_50"] == pytest.approx(1.0)
    assert metrics["test/num_examples"] == 4 and metrics["test/num_objects"] == sum(len(t["labels"]) for t in truth)
    assert [f.name for f in files] == ["instances.png"] and files[0].stat().st_size > 0


# ----------------------------------------------------------------------------------- net and smoke fit


def test_net_trains_on_masks_and_predicts_one_mask_per_detection(make_cfg):
    torch.manual_seed(0)
    net = instantiate(make_cfg("experiment=instance-shapes-maskrcnn", "model.net.size=64").model.net)
    t = _truth(2, 64)
    target = {"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].to(torch.uint8)}
    losses = net.train()([torch.rand(3, 64, 64)], [target])
    assert {"loss_mask", "loss_classifier", "loss_objectness"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        (out,) = net.eval()([torch.rand(3, 64, 64)])
    assert out["masks"].shape[1:] == (1, 64, 64) and len(out["masks"]) == len(out["boxes"]) == len(out["scores"])


def test_smoke_fit_and_evaluate(workdir, make_cfg):
    cfg = make_cfg("experiment=instance-shapes-maskrcnn", "profile=smoke", "tracking.log_model=false", *TINY)
    prepare_data(cfg)
    summary = train(cfg)
    assert Path(summary["checkpoint"]).is_file() and summary["monitor"] == "val/segm_map"
    metrics = evaluate(cfg)
    on_disk = json.loads(Path(cfg.paths.metrics_file).read_text())
    assert on_disk == pytest.approx(metrics)
    assert {"test/segm_map", "test/segm_map_50", "test/bbox_map", "test/num_examples"} <= set(on_disk)
    assert on_disk["ood/num_examples"] == 4 and {"ood/segm_map_50_kept", "ood/passed"} <= set(on_disk)
    runs = mlflow_runs(workdir / "mlflow.db")
    assert {r["tags"]["stage"] for r in runs} == {"train", "evaluate"}
    assert all(r["experiment"] == "instance-shapes" and r["name"] == "maskrcnn" and r["status"] == "FINISHED" for r in runs)
    train_run = next(r for r in runs if r["tags"]["stage"] == "train")
    assert {"train/loss", "train/loss_mask", "val/loss", "val/segm_map", "val/map"} <= set(train_run["metrics"])
    assert (Path(cfg.paths.reports_dir) / "instances.png").is_file()
