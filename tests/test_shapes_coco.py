import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from dlzoo.data.shapes_coco import (
    CocoDetectionDataset,
    CocoSegmentationDataset,
    ShapesDataModule,
    detection_collate,
    prepare,
    rasterize_semantic_mask,
    validate_coco,
)
from dlzoo.errors import ConfigError, DataError

TINY = dict(image_size=64, n_train=6, n_val=2, n_test=2, max_objects=4, seed=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    summary = prepare(str(out), **TINY)
    return out, summary


def _instance_masks(coco: COCO, image_id: int) -> list:
    return [(ann, coco.annToMask(ann).astype(bool)) for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]


def test_prepare_writes_coco_that_pycocotools_reads(shapes):
    out, summary = shapes
    coco = COCO(str(out / "train" / "annotations.json"))
    assert sorted(coco.getImgIds()) == list(range(1, 7))
    assert [(c["id"], c["name"], c["supercategory"]) for c in coco.loadCats(coco.getCatIds())] == [
        (1, "circle", "shape"), (2, "square", "shape"), (3, "triangle", "shape")]
    anns = coco.dataset["annotations"]
    assert len({a["id"] for a in anns}) == len(anns) == summary["splits"]["train"]["annotations"]
    assert sum(summary["splits"]["train"]["per_category"].values()) == len(anns)
    assert all(a["iscrowd"] == 0 for a in anns)
    assert (out / "train" / "images" / coco.loadImgs(1)[0]["file_name"]).is_file()
    for image_id in coco.getImgIds():
        masks = _instance_masks(coco, image_id)
        ours = rasterize_semantic_mask(coco, image_id, 64, 64)
        assert ours.dtype == np.int64
        # the same from the plain dict, and the union of all shapes is the foreground
        assert np.array_equal(ours, rasterize_semantic_mask(coco.dataset, image_id, 64, 64))
        assert np.array_equal(ours != 0, np.any([m for _, m in masks], axis=0) if masks else np.zeros((64, 64), bool))
        # the last-drawn annotation is never occluded: pycocotools and ours agree on all its pixels
        last, last_mask = masks[-1]
        assert last_mask.any() and (ours[last_mask] == last["category_id"]).all()


def test_painting_annotations_in_order_reproduces_the_image(shapes):
    out, _ = shapes
    coco = COCO(str(out / "train" / "annotations.json"))
    occluded = 0
    for image_id in coco.getImgIds():
        pixels = np.array(Image.open(out / "train" / "images" / coco.loadImgs(image_id)[0]["file_name"]))
        owner = np.full((64, 64), -1)
        masks = _instance_masks(coco, image_id)
        for k, (_, m) in enumerate(masks):
            occluded += int((owner[m] >= 0).any())
            owner[m] = k
        for k, (ann, m) in enumerate(masks):
            visible = owner == k
            # every shape stays mostly visible, and its visible pixels are exactly its colour
            assert visible.sum() >= 0.5 * m.sum()
            assert (pixels[visible] == ann["color"]).all()
    assert occluded >= 1, "the tiny set should contain at least one overlap (seed 3)"


def test_bboxes_lie_inside_the_image_and_span_the_polygon(shapes):
    out, _ = shapes
    for split in ("train", "val", "test"):
        coco = json.loads((out / split / "annotations.json").read_text())
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert len(a["segmentation"]) == 1 and len(poly) == {1: 32, 2: 4, 3: 3}[a["category_id"]]
            assert np.allclose([x, y, x + w, y + h], [*poly.min(0), *poly.max(0)], atol=0.011)
            px, py = poly[:, 0], poly[:, 1]
            shoelace = abs(np.dot(px, np.roll(py, -1)) - np.dot(py, np.roll(px, -1))) / 2
            assert a["area"] == pytest.approx(shoelace, abs=0.01)
            assert 12 <= max(w, h) <= 32 * 1.16  # sizes 12..image_size//2; a triangle's side


def test_same_seed_gives_identical_files(tmp_path):
    a, b, c = (prepare(str(tmp_path / d), **{**TINY, "seed": s}) for d, s in (("a", 3), ("b", 3), ("c", 4)))
    assert a == b
    for split in ("train", "val", "test"):
        files = [p.relative_to(tmp_path / "a") for p in sorted((tmp_path / "a" / split).rglob("*")) if p.is_file()]
        assert len(files) == 1 + TINY[f"n_{split}"]  # annotations.json and the images
        for f in files:
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    first = "train/images/000001.png"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_prepare_rejects_impossible_settings(tmp_path):
    with pytest.raises(ConfigError, match="min_objects"):
        prepare(str(tmp_path), min_objects=3, max_objects=2)
    with pytest.raises(ConfigError, match="min_size"):
        prepare(str(tmp_path), image_size=20)


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
    dm = ShapesDataModule(str(tmp_path / "not-prepared"), batch_size=2, **paths)
    assert dm.num_classes == 3 and dm.category_names == ["background", "cat", "dog"] and dm.category_ids == [5, 9]
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert isinstance(images, list) and images[1].shape == (3, 36, 24)  # two sizes -> a list
    assert targets[0]["labels"].tolist() == [2, 1] and targets[0]["image_id"] == 7

    with pytest.raises(DataError, match="differ in size"):
        ShapesDataModule(str(tmp_path), task="segmentation", batch_size=2, **paths).setup("fit")
    dm = ShapesDataModule(str(tmp_path), task="segmentation", batch_size=1, **paths)
    dm.setup("test")
    image, mask = next(iter(dm.test_dataloader()))
    assert image.shape == (1, 3, 30, 40) and mask.shape == (1, 30, 40)
    assert mask[0, 5, 5] == 1 and mask[0, 10, 10] == 2 and mask[0, 20, 20] == 0  # cat drawn over dog


def test_datamodule_defaults_and_one_split_pointed_elsewhere(shapes):
    out, _ = shapes
    elsewhere = {"val_json": str(out / "test" / "annotations.json"), "val_images": str(out / "test" / "images")}
    dm = ShapesDataModule(str(out), batch_size=4, **elsewhere)
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}  # fit does not need the test split
    assert len(dm.datasets["train"]) == 6 and dm.datasets["val"].json_path == out / "test" / "annotations.json"
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and len(targets) == 4
    dm = ShapesDataModule(str(out), task="segmentation", batch_size=2)
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
    dm = ShapesDataModule(str(out), val_json=str(tmp_path / "val.json"), val_images=str(out / "val" / "images"))
    with pytest.raises(DataError, match="differ from the other splits"):
        dm.setup("fit")


def test_missing_prepared_data_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="dvc repro"):
        ShapesDataModule(str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(DataError, match="dvc repro"):
        ShapesDataModule(str(tmp_path / "nowhere")).num_classes


def test_datamodule_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="detection, segmentation"):
        ShapesDataModule(str(tmp_path), task="classification")
    with pytest.raises(ConfigError, match="go together"):
        ShapesDataModule(str(tmp_path), train_json="a.json")
