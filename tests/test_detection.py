"""Detection (task detection-shapes): IoU conventions, the SSD and YOLO nets' train/eval outputs,
the evaluator (also on an external COCO folder, and crowd regions as COCOeval counts them), and a
smoke fit + evaluate of each family."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.ops import box_convert

from conftest import mlflow_runs, prepare_data
from types import SimpleNamespace

from torchvision.transforms import v2

from dlzoo.data.coco import CocoDataModule, CocoDetectionDataset
from dlzoo.data.shapes import prepare as prepare_shapes
from dlzoo.evaluation.detection import PR_CURVE, coco_box_iou
from dlzoo.evaluation.detection import evaluate as evaluate_detection
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.training.train import train

FAMILIES = ("ssd", "yolo-anchor-free", "yolov3")
TINY = ("data.prepare.n_train=8", "data.prepare.n_val=4", "data.prepare.n_test=4", "data.prepare.image_size=64",
        "model.net.size=64", "data.module.batch_size=4")


# ------------------------------------------------------------------------------------------ IoU


@pytest.mark.parametrize("a, b, expected", [
    ([10, 20, 30, 40], [10, 20, 30, 40], 1.0),      # identical
    ([0, 0, 10, 10], [20, 20, 5, 5], 0.0),          # disjoint
    ([0, 0, 10, 10], [10, 0, 10, 10], 0.0),         # touching edges: no area in common
    ([0, 0, 10, 10], [5, 0, 10, 10], 1 / 3),        # half of each overlaps: 50 / (100 + 100 - 50)
    ([0, 0, 10, 10], [2.5, 2.5, 5, 5], 0.25),       # one inside the other: 25 / 100
    ([0, 0, 4, 2], [2, 1, 4, 2], 2 / 14),           # quarter overlap of 8-area boxes: 2 / (8 + 8 - 2)
])
def test_iou_hand_computed(a, b, expected):
    iou = coco_box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert iou.shape == (1, 1) and float(iou) == pytest.approx(expected)
    # pycocotools (COCOeval's own IoU, on [x, y, w, h]) agrees: same convention, no +1 pixel
    assert float(mask_utils.iou([a], [b], [0])[0, 0]) == pytest.approx(expected)


def test_box_convert_matches_coco_bbox_convention():
    xywh = torch.tensor([[3.0, 4.0, 10.0, 20.0]])  # COCO: top-left corner, width, height
    xyxy = box_convert(xywh, "xywh", "xyxy")
    assert xyxy.tolist() == [[3.0, 4.0, 13.0, 24.0]]
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == xywh.tolist()
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[8.0, 14.0, 10.0, 20.0]]


def test_v2_flips_move_boxes_with_the_pixels():
    image = torch.zeros(3, 20, 30)
    image[:, 2:6, 3:10] = 1  # rows 2..5, columns 3..9 -> box x 3..10, y 2..6
    target = {"boxes": torch.tensor([[3.0, 2.0, 10.0, 6.0]]), "labels": torch.tensor([1]), "image_id": 7,
              "crowd_boxes": torch.tensor([[0.0, 0.0, 5.0, 4.0]]), "crowd_labels": torch.tensor([2])}
    flips = SimpleNamespace(transforms=v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomVerticalFlip(p=1.0)]))
    flipped, t = CocoDetectionDataset.augment(flips, image, target)
    x0, y0, x1, y1 = t["boxes"][0].int().tolist()
    assert (x0, y0, x1, y1) == (20, 14, 27, 18)
    assert flipped[:, y0:y1, x0:x1].sum() == image.sum()  # the box still frames every lit pixel
    assert t["crowd_boxes"].tolist() == [[25.0, 16.0, 30.0, 20.0]]  # crowd regions move too
    assert t["labels"].tolist() == [1] and t["image_id"] == 7  # the rest passes through
    assert type(flipped) is torch.Tensor and type(t["boxes"]) is torch.Tensor  # plain tensors out
    assert target["boxes"].tolist() == [[3.0, 2.0, 10.0, 6.0]]  # the caller's target is left alone


def test_train_transforms_augment_the_training_split_only(tmp_path):
    prepare_shapes(str(tmp_path / "shapes"), image_size=64, n_train=4, n_val=2, n_test=1)
    flip = v2.RandomHorizontalFlip(p=1.0)
    plain = CocoDataModule(str(tmp_path / "shapes"), batch_size=4)
    flipped = CocoDataModule(str(tmp_path / "shapes"), batch_size=4, train_transforms=flip)
    plain.setup("fit")
    flipped.setup("fit")
    a, ta = plain.datasets["train"][0]
    b, tb = flipped.datasets["train"][0]
    assert torch.equal(b, a.flip(-1)) and torch.allclose(tb["boxes"][:, [2, 0]], 64 - ta["boxes"][:, [0, 2]])
    assert torch.equal(flipped.datasets["val"][0][0], plain.datasets["val"][0][0])


# --------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("family", FAMILIES)
def test_net_outputs(family, make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg(f"experiment=detection-shapes-{family}", "model.net.size=64")
    net = instantiate(cfg.model.net)
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [35.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # an image without objects
    losses = net.train()(images, targets)
    assert isinstance(losses, dict) and len(losses) >= 2
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)

    with torch.no_grad():
        detections = net.eval()([torch.rand(3, 64, 64), torch.rand(3, 80, 96)])  # any size: resized and back
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(64, 64), (80, 96)]):
        assert set(det) == {"boxes", "scores", "labels"}
        n = len(det["scores"])
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        if n:
            assert det["labels"].min() >= 1 and det["labels"].max() <= 3  # 0 is background
            assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
            assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h
            assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted, best first


def test_validation_loss_leaves_the_net_untouched(make_cfg):
    module = instantiate(make_cfg("experiment=detection-shapes-ssd", "model.net.size=64").model).eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0]]), "labels": torch.tensor([2])}]
    losses = module.held_out_losses(torch.rand(1, 3, 64, 64), targets)
    assert set(losses) == {"bbox_regression", "classification"} and not module.net.training
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # batch-norm statistics too


# Loads a logged model where the project is not installed: no sys.path entry holding a `dlzoo` package, so only
# the model's own code_paths can provide it.
LOAD_WITHOUT_PROJECT = """
import sys
from pathlib import Path
sys.path = [p for p in sys.path if not Path(p or ".", "dlzoo").is_dir()]
try:
    import dlzoo
    raise SystemExit("dlzoo is importable without the model's code")
except ImportError:
    pass
import mlflow.pytorch, torch
net = mlflow.pytorch.load_model(sys.argv[1])
with torch.no_grad():
    got = net(torch.load(sys.argv[2]))
torch.save([d["boxes"] for d in got], sys.argv[3])
"""


@pytest.mark.parametrize("family", ["ssd"])   # one suffices: the same code path logs all three; SSD's head is torchvision's
def test_the_logged_detector_loads_without_the_project(family, make_cfg, tmp_path, monkeypatch):
    """train.py logs a detector pickled (detections are a list of dicts: no tensor graph for torch.export) with
    `src/dlzoo` as code_paths and the requirements its modules import: it loads and detects the same boxes in a
    process that cannot import the project otherwise."""
    import subprocess
    import sys

    import mlflow
    from omegaconf import OmegaConf

    from dlzoo.training.train import _log_model

    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(f"experiment=detection-shapes-{family}", "model.net.size=64", "tracking.register_model=false")
    module = instantiate(cfg.model).eval()
    example = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = [d["boxes"] for d in module.net(example)]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        _log_model(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), module, example)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / "dl")))
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"torch", "torchvision"}, requirements
    assert (model_dir / "code" / "dlzoo" / "models" / "detection.py").is_file()
    torch.save(example, tmp_path / "example.pt")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PROJECT, str(model_dir), str(tmp_path / "example.pt"),
                           str(tmp_path / "got.pt")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "got.pt")
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_yolo_assigns_the_centre_cell_and_prefers_the_smaller_object(make_cfg):
    net = instantiate(make_cfg("experiment=detection-shapes-yolo-anchor-free").model.net)
    stride = 8.0
    centers = (torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy"), -1).reshape(-1, 2) + 0.5) * stride
    big, small = [0.0, 0.0, 32.0, 32.0], [9.0, 9.0, 15.0, 15.0]  # small: inside one cell (8..16)
    index = net.assign(torch.tensor([big, small]), centers, stride)
    assert index[1 * 4 + 1] == 1  # cell (1, 1) holds the small object's centre: it goes to the small one
    assert (index >= 0).sum() > 1 and (index[index >= 0] == 0).any()  # the big one gets several cells


# ------------------------------------------------------------------------------------ evaluator


def test_evaluator_on_prepared_and_external_coco(workdir, make_cfg):
    cfg = make_cfg("experiment=detection-shapes-ssd", *TINY)
    prepare_data(cfg)
    module, datamodule = instantiate(cfg.model), instantiate(cfg.data.module)
    evaluator = instantiate(cfg.evaluator)
    metrics, files = evaluator(module, datamodule, workdir / "reports")
    assert metrics["test/num_examples"] == 4
    assert {"test/map", "test/map_50", "test/map_75"} <= set(metrics)
    assert all(-1 <= metrics[k] <= 1 for k in metrics if k.startswith("test/ap/") or "map" in k)
    assert {k.removeprefix("test/ap/") for k in metrics if k.startswith("test/ap/")} <= {"circle", "square", "triangle"}
    assert [f.name for f in files] == ["detections.png", "pr_curve.csv", "ood_detections.png", "ood_pr_curve.csv"]
    assert files[0].stat().st_size > 0
    # the recipe's out-of-distribution split (drawn by the second generator setting) scored beside it
    assert metrics["ood/num_examples"] == 4 and {"ood/map", "ood/map_50", "ood/map_50_kept", "ood/passed"} <= set(metrics)
    if metrics["test/map_50"] > 0:
        assert metrics["ood/map_50_kept"] == pytest.approx(metrics["ood/map_50"] / metrics["test/map_50"])

    # A user's COCO folder for the test split (another 3 images), named by config, with class names given.
    other = workdir / "other"
    instantiate(cfg.data.prepare, out_dir=str(other), n_test=3, seed=7)
    cfg2 = make_cfg("experiment=detection-shapes-ssd", *TINY, f"data.module.test_json={other}/test/annotations.json",
                    f"data.module.test_images={other}/test/images", "evaluator.class_names=[bg,C,S,T]")
    metrics2, _ = instantiate(cfg2.evaluator)(module, instantiate(cfg2.data.module), workdir / "reports2")
    coco = json.loads((other / "test" / "annotations.json").read_text())
    assert metrics2["test/num_examples"] == 3 and metrics2["test/num_objects"] == len(coco["annotations"])
    assert {k.removeprefix("test/ap/") for k in metrics2 if k.startswith("test/ap/")} <= {"C", "S", "T"}

    # max_images (the smoke profile's eval_limit) scores the first images of both splits
    metrics3, _ = instantiate(cfg.evaluator, max_images=2)(module, instantiate(cfg.data.module), workdir / "reports3")
    assert metrics3["test/num_examples"] == 2 and metrics3["ood/num_examples"] == 2


def test_perfect_predictions_score_one(workdir, make_cfg):
    """The evaluator's numbers are COCO's: the ground truth itself as predictions gives AP 1."""
    cfg = make_cfg("experiment=detection-shapes-ssd", *TINY)
    prepare_data(cfg)
    datamodule = instantiate(cfg.data.module)
    datamodule.setup("test")
    truth = {t["image_id"]: t for _, t in datamodule.datasets["test"]}

    class Oracle(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": truth[i]["boxes"], "labels": truth[i]["labels"], "scores": torch.ones(len(truth[i]["labels"]))}
                    for i in sorted(truth)[: len(images)]]

    datamodule.batch_size = 64  # one batch, so the oracle's image order is the test order
    metrics, _ = evaluate_detection(Oracle(), datamodule, workdir / "reports")
    assert metrics["test/map"] == pytest.approx(1.0) and metrics["test/map_50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for k, v in metrics.items() if k.startswith("test/ap/"))


def _crowd_folder(root: Path, crowd: bool) -> dict:
    """Two images, each with one object and one crowd region (iscrowd=1; plain objects if not `crowd`)."""
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 64)).save(root / "images" / name)
    anns = [(1, [4, 4, 20, 20], 0), (1, [30, 30, 30, 30], 1), (2, [10, 10, 16, 16], 0), (2, [34, 2, 28, 28], 1)]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64},
                       {"id": 2, "file_name": "b.png", "width": 64, "height": 64}],
            "annotations": [{"id": k + 1, "image_id": im, "category_id": 7, "bbox": box, "iscrowd": c if crowd else 0}
                             for k, (im, box, c) in enumerate(anns)],
            "categories": [{"id": 7, "name": "person"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return {"test_json": str(root / "annotations.json"), "test_images": str(root / "images")}


@pytest.mark.parametrize("crowd", [True, False])
def test_crowd_regions_count_as_in_cocoeval(crowd, workdir):
    """A confident detection inside image 1's crowd region, none on image 2's: with iscrowd=1 (as
    COCOeval) the first is neither a true nor a false positive and the second is not missed, so the
    exact boxes of the two objects still score AP 1 and recall 1. The same regions as plain objects
    (crowd=False) are a false positive ranked first and a miss, which shows the test can fail."""
    datamodule = CocoDataModule(str(workdir / "unused"), batch_size=2, **_crowd_folder(workdir / "coco", crowd))

    class Detector(torch.nn.Module):
        def forward(self, images):
            boxes = [[[34.0, 34.0, 54.0, 54.0], [4.0, 4.0, 24.0, 24.0]],  # inside the crowd, then the object
                     [[10.0, 10.0, 26.0, 26.0]]]
            scores = [[0.9, 0.8], [0.7]]
            return [{"boxes": torch.tensor(b), "scores": torch.tensor(s), "labels": torch.ones(len(b), dtype=torch.int64)}
                    for b, s in zip(boxes, scores)]

    metrics, _ = evaluate_detection(Detector(), datamodule, workdir / "reports")
    # the precision-recall table (IoU 0.5) at COCO's 101 recall levels, precision interpolated from the right
    curve = pd.read_csv(workdir / "reports" / PR_CURVE)
    assert list(curve.columns) == ["class", "recall", "precision"] and set(curve["class"]) == {"person"}
    assert len(curve) == 101 and curve["recall"].iloc[-1] == 1.0
    if crowd:
        assert metrics["test/num_objects"] == 2
        assert metrics["test/map"] == pytest.approx(1.0) and metrics["test/mar_100"] == pytest.approx(1.0)
        assert metrics["test/ap/person"] == pytest.approx(1.0)
        assert (curve["precision"] == 1.0).all()
    else:
        assert metrics["test/num_objects"] == 4
        assert metrics["test/map"] < 0.5 and metrics["test/mar_100"] == pytest.approx(0.5)
        # ranked: a false positive (IoU 0.44 with the former crowd box), then two hits: recall 1/4, 2/4 at
        # precision 1/2, 2/3; interpolated, 2/3 up to recall 0.5 and nothing beyond
        low, high = curve[curve["recall"] <= 0.5], curve[curve["recall"] > 0.5]
        assert low["precision"].to_numpy() == pytest.approx(2 / 3, abs=1e-6) and (high["precision"] == 0).all()


# ------------------------------------------------------------------------------------ smoke fit


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_fit_and_evaluate(family, workdir, make_cfg):
    # log_model=false: train.py's log_model call needs serialization_format="pickle" for list-of-dict outputs
    cfg = make_cfg(f"experiment=detection-shapes-{family}", "profile=smoke", "tracking.log_model=false", *TINY)
    prepare_data(cfg)
    summary = train(cfg)  # also logs the bare net to MLflow, run on 4 val images
    assert Path(summary["checkpoint"]).is_file() and summary["monitor"] == "val/map"
    metrics = evaluate(cfg)
    on_disk = json.loads(Path(cfg.paths.metrics_file).read_text())
    assert on_disk == pytest.approx(metrics)
    assert {"test/map", "test/map_50", "test/map_75", "test/num_examples"} <= set(on_disk) and on_disk["num_params"] > 0

    runs = mlflow_runs(workdir / "mlflow.db")
    assert {r["tags"]["stage"] for r in runs} == {"train", "evaluate"}
    assert all(r["experiment"] == "detection-shapes" and r["name"] == family and r["status"] == "FINISHED" for r in runs)
    train_run = next(r for r in runs if r["tags"]["stage"] == "train")
    assert {"train/loss", "val/loss", "val/map", "val/map_50"} <= set(train_run["metrics"])
    eval_run = next(r for r in runs if r["tags"]["stage"] == "evaluate")
    assert eval_run["metrics"]["test/map_50"] == pytest.approx(on_disk["test/map_50"])
    assert (Path(cfg.paths.reports_dir) / "detections.png").is_file()
    assert np.isfinite(summary["best_score"])
