"""The generic COCO module: the validator's errors, the datasets and the DataModule, on a user's own
COCO folder and on the prepared shapes; crowd annotations kept apart from the training targets."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dlzoo.data.coco import (
    CocoDataModule,
    CocoDetectionDataset,
    CocoSegmentationDataset,
    detection_collate,
    rasterize_semantic_mask,
    validate_coco,
)
from dlzoo.errors import ConfigError, DataError
from dlzoo.models.detection import metric_target



# ----------------------------------------------------------------------------------- validator

def _valid() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 5, "bbox": [1.0, 2.0, 10.0, 8.0]},
                        {"id": 11, "image_id": 2, "category_id": 9, "bbox": [0.0, 0.0, 40.0, 30.0]}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
    }


def _write(tmp_path, coco, files=("a.png", "b.png")):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for f in files:
        Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / f)
    path = tmp_path / "ann.json"
    path.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return path, tmp_path / "imgs"


def _broken(change):
    coco = _valid()
    change(coco)
    return coco


MALFORMED = {
    "missing top-level": (lambda c: c.pop("categories"), r"missing top-level key\(s\) categories"),
    "image lacks key": (lambda c: c["images"][1].pop("file_name"), r"images entries missing required keys.*id 2 lacks file_name"),
    "annotation lacks key": (lambda c: c["annotations"][0].pop("bbox"), r"annotations entries missing.*id 10 lacks bbox"),
    "category lacks key": (lambda c: c["categories"][1].pop("name"), r"categories entries missing.*id 9 lacks name"),
    "duplicate image": (lambda c: c["images"][1].update(id=1), r"duplicate image ids 1"),
    "duplicate annotation": (lambda c: c["annotations"][1].update(id=10), r"duplicate annotation ids 10"),
    "duplicate category": (lambda c: c["categories"][1].update(id=5), r"duplicate category ids 5"),
    "unknown image": (lambda c: c["annotations"][1].update(image_id=7), r"image_id not in images: ids 11"),
    "unknown category": (lambda c: c["annotations"][0].update(category_id=6), r"category_id not in categories: ids 10"),
    "bbox 3 numbers": (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), r"bbox is not 4 numbers.*ids 10"),
    "bbox strings": (lambda c: c["annotations"][1].update(bbox=["0", 0, 4, 4]), r"bbox is not 4 numbers.*ids 11"),
    "bbox zero width": (lambda c: c["annotations"][1].update(bbox=[0, 0, 0, 4]), r"width or height <= 0: ids 11"),
    "bbox negative height": (lambda c: c["annotations"][0].update(bbox=[0, 0, 4, -1]), r"width or height <= 0: ids 10"),
    "bbox outside": (lambda c: c["annotations"][0].update(bbox=[35, 2, 10, 8]), r"outside their image.*ids 10"),
    "string id": (lambda c: c["annotations"][1].update(image_id="2"), r"id/image_id/category_id are not integers: #1"),
    "bad polygon": (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), r"segmentation.*ids 10"),
    "iscrowd not 0/1": (lambda c: c["annotations"][1].update(iscrowd=2), r"iscrowd is not 0 or 1: ids 11"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_validator_names_the_problem_and_the_ids(tmp_path, case):
    change, message = MALFORMED[case]
    path, imgs = _write(tmp_path, _broken(change))
    with pytest.raises(DataError, match=message):
        validate_coco(path, imgs)


def test_validator_file_level_problems(tmp_path):
    with pytest.raises(DataError, match="not found"):
        validate_coco(tmp_path / "nope.json", tmp_path)
    path, imgs = _write(tmp_path, "{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        validate_coco(path, imgs)
    path, imgs = _write(tmp_path, _valid(), files=("a.png",))
    (imgs / "b.png").unlink()
    with pytest.raises(DataError, match=r"image files missing .*ids 2 \(b.png\)"):
        validate_coco(path, imgs)
    assert validate_coco(path, imgs, check_files=False)["images"][1]["id"] == 2


def test_validator_accepts_a_valid_file_with_subpixel_slack(tmp_path):
    coco = _valid()
    coco["annotations"][1]["bbox"] = [-0.5, -0.5, 40.9, 30.9]  # within the 1 px tolerance
    path, imgs = _write(tmp_path, coco)
    assert validate_coco(path, imgs) == coco


# ------------------------------------------------------------------------------------ datasets

def test_detection_items_are_xyxy_with_contiguous_labels(shapes):
    out, _ = shapes
    ds = CocoDetectionDataset(out / "train" / "annotations.json", out / "train" / "images")
    coco = json.loads((out / "train" / "annotations.json").read_text())
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert target["image_id"] == 1 and target["labels"].dtype == torch.int64
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(anns), 4)
    x, y, w, h = anns[0]["bbox"]
    assert target["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert target["labels"].tolist() == [a["category_id"] for a in anns]  # ids 1..3 are already contiguous
    images, targets = detection_collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2
    images, _ = detection_collate([ds[0], (torch.zeros(3, 32, 48), ds[1][1])])
    assert isinstance(images, list) and images[1].shape == (3, 32, 48)


def test_crowd_regions_are_kept_out_of_training_targets_but_not_out_of_evaluation(tmp_path):
    coco = _valid()
    coco["annotations"] += [{"id": 12, "image_id": 1, "category_id": 9, "bbox": [20, 5, 15, 20], "iscrowd": 1},
                            {"id": 13, "image_id": 1, "category_id": 5, "bbox": [2, 20, 8, 6], "iscrowd": 0}]
    path, imgs = _write(tmp_path, coco)
    _, target = CocoDetectionDataset(path, imgs)[0]
    assert target["boxes"].tolist() == [[1, 2, 11, 10], [2, 20, 10, 26]] and target["labels"].tolist() == [1, 1]
    assert target["crowd_boxes"].tolist() == [[20, 5, 35, 25]] and target["crowd_labels"].tolist() == [2]

    seen = metric_target(target)  # objects first, then the crowd regions, flagged
    assert seen["boxes"].tolist() == [[1, 2, 11, 10], [2, 20, 10, 26], [20, 5, 35, 25]]
    assert seen["labels"].tolist() == [1, 1, 2] and seen["iscrowd"].tolist() == [0, 0, 1]
    no_crowd = metric_target({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    assert no_crowd["boxes"].shape == (0, 4) and no_crowd["iscrowd"].shape == (0,)


def test_segmentation_items_match_the_rasteriser(shapes):
    out, _ = shapes
    ds = CocoSegmentationDataset(out / "val" / "annotations.json", out / "val" / "images", cache=False)
    image, mask = ds[1]
    assert image.shape == (3, 64, 64) and mask.dtype == torch.int64 and mask.shape == (64, 64)
    coco = json.loads((out / "val" / "annotations.json").read_text())
    assert np.array_equal(mask.numpy(), rasterize_semantic_mask(coco, 2, 64, 64))
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3} and (mask > 0).any()


def _custom_coco(tmp_path):
    """A user's own COCO folder: category ids with gaps, two image sizes, polygons."""
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    Image.new("RGB", (40, 30), (9, 9, 9)).save(folder / "pics" / "x.png")
    Image.new("L", (24, 36)).save(folder / "pics" / "y.png")  # grayscale is converted to RGB
    coco = {
        "images": [{"id": 7, "file_name": "x.png", "width": 40, "height": 30},
                   {"id": 8, "file_name": "y.png", "width": 24, "height": 36}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [2, 2, 10, 10], "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [4, 4, 4, 4], "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]]},
            {"id": 3, "image_id": 8, "category_id": 5, "bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
    }
    (folder / "train.json").write_text(json.dumps(coco))
    return folder / "train.json", folder / "pics"


def test_datamodule_on_a_users_own_coco_folder(tmp_path):
    js, pics = _custom_coco(tmp_path)
    paths = {f"{s}_{k}": str(v) for s in ("train", "val", "test") for k, v in (("json", js), ("images", pics))}
    dm = CocoDataModule(str(tmp_path / "not-prepared"), batch_size=2, **paths)
    assert dm.num_classes == 3 and dm.category_names == ["background", "cat", "dog"] and dm.category_ids == [5, 9]
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert isinstance(images, list) and images[1].shape == (3, 36, 24)  # two sizes -> a list
    assert targets[0]["labels"].tolist() == [2, 1] and targets[0]["image_id"] == 7

    with pytest.raises(DataError, match="differ in size"):
        CocoDataModule(str(tmp_path), task="segmentation", batch_size=2, **paths).setup("fit")
    dm = CocoDataModule(str(tmp_path), task="segmentation", batch_size=1, **paths)
    dm.setup("test")
    image, mask = next(iter(dm.test_dataloader()))
    assert image.shape == (1, 3, 30, 40) and mask.shape == (1, 30, 40)
    assert mask[0, 5, 5] == 1 and mask[0, 10, 10] == 2 and mask[0, 20, 20] == 0  # cat drawn over dog


def test_datamodule_defaults_and_one_split_pointed_elsewhere(shapes):
    out, _ = shapes
    elsewhere = {"val_json": str(out / "test" / "annotations.json"), "val_images": str(out / "test" / "images")}
    dm = CocoDataModule(str(out), batch_size=4, **elsewhere)
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}  # fit does not need the test split
    assert len(dm.datasets["train"]) == 6 and dm.datasets["val"].json_path == out / "test" / "annotations.json"
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and len(targets) == 4
    dm = CocoDataModule(str(out), task="segmentation", batch_size=2)
    dm.setup()
    images, masks = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64) and masks.dtype == torch.int64
    assert dm.num_classes == 4 and dm.category_names == ["background", "circle", "square", "triangle"]


def test_datamodule_rejects_categories_that_differ_between_splits(shapes, tmp_path):
    out, _ = shapes
    coco = json.loads((out / "val" / "annotations.json").read_text())
    coco = copy.deepcopy(coco)
    coco["categories"][2]["name"] = "tri"
    (tmp_path / "val.json").write_text(json.dumps(coco))
    dm = CocoDataModule(str(out), val_json=str(tmp_path / "val.json"), val_images=str(out / "val" / "images"))
    with pytest.raises(DataError, match="differ from the other splits"):
        dm.setup("fit")


def test_missing_prepared_data_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="dvc repro"):
        CocoDataModule(str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(DataError, match="dvc repro"):
        CocoDataModule(str(tmp_path / "nowhere")).num_classes


def test_datamodule_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="detection, segmentation"):
        CocoDataModule(str(tmp_path), task="classification")
    with pytest.raises(ConfigError, match="go together"):
        CocoDataModule(str(tmp_path), train_json="a.json")


def test_evaluating_the_first_images_leaves_the_callers_split_whole(shapes):
    """`eval_limit` (smoke) cuts the evaluated test split to a copy; the DataModule the evaluator was given keeps
    every test image."""
    from dlzoo.evaluation.ood import first_test_images

    out, summary = shapes
    dm = CocoDataModule(str(out), batch_size=2)
    whole = summary["splits"]["test"]["images"]
    cut = first_test_images(dm, 1)
    assert len(cut.datasets["test"]) == 1 and len(dm.datasets["test"]) == whole > 1
    assert first_test_images(dm, None) is dm and first_test_images(dm, whole) is dm
