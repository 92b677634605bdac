"""The shapes generator (`prepare_shapes`): seeded, valid COCO whose polygons, painted in order,
reproduce the images."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO

from dlzoo.data.coco import rasterize_semantic_mask
from conftest import REPO, TINY_SHAPES as TINY
from dlzoo.data.shapes import DEFAULT_STYLE, _same_class_contacts, prepare
from dlzoo.errors import ConfigError



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
    with pytest.raises(ConfigError, match="background must be one of gradient, stripes"):
        prepare(str(tmp_path), background="plaid")


def _setting(name: str) -> dict:
    """The generator style a data config sets (conf/data/<name>.yaml, on top of shapes.yaml)."""
    keys = ("rotate_squares", "background", "distractors", "distractor_kind")
    prepare_cfg = {**OmegaConf.load(REPO / "conf/data/shapes.yaml").prepare}
    if name != "shapes":
        prepare_cfg.update(OmegaConf.load(REPO / f"conf/data/{name}.yaml").prepare)
    return {k: prepare_cfg[k] for k in keys if k in prepare_cfg}


@pytest.mark.parametrize("name", ["shapes", "shapes-ood"])
def test_the_configured_settings_draw_tilted_squares_and_marks_under_exact_shapes(tmp_path, name):
    """Training (shapes) and the out-of-distribution split both draw squares at any angle and marks that are not
    objects; every shape's pixels are still exactly its colour where it is visible (the marks go under the shapes),
    and the setting is written into the files."""
    style = {**DEFAULT_STYLE, **_setting(name)}
    summary = prepare(str(tmp_path / name), **{**TINY, "n_train": 12}, **style)
    assert summary["generator"] == style
    coco = COCO(str(tmp_path / name / "train" / "annotations.json"))
    squares = [a for a in coco.loadAnns(coco.getAnnIds()) if a["category_id"] == 2]
    tilted = [a for a in squares if len({round(x, 1) for x in a["segmentation"][0][0::2]}) > 2]
    assert squares and len(tilted) >= 0.8 * len(squares)  # an axis-aligned square has two distinct x values
    for image_id in coco.getImgIds():
        pixels = np.array(Image.open(tmp_path / name / "train" / "images" / coco.loadImgs(image_id)[0]["file_name"]))
        owner = np.full(pixels.shape[:2], -1)
        masks = _instance_masks(coco, image_id)
        for k, (_, m) in enumerate(masks):
            owner[m] = k
        for k, (ann, _) in enumerate(masks):
            assert (pixels[owner == k] == ann["color"]).all()
    default = prepare(str(tmp_path / "default"), **TINY)
    assert "generator" not in default  # the default files are what they were before the setting existed
    info = json.loads((tmp_path / "default" / "test" / "annotations.json").read_text())["info"]
    assert "generator" not in info


def test_the_out_of_distribution_split_draws_what_training_never_sees():
    train, ood = _setting("shapes"), _setting("shapes-ood")
    seen = {"mixed": {"gradient", "stripes"}}.get(train["background"], {train["background"]})
    assert ood["background"] not in seen
    assert ood["distractors"] > 0 and ood["distractor_kind"] != train["distractor_kind"]
    assert OmegaConf.load(REPO / "conf/data/shapes-ood.yaml").prepare.seed != OmegaConf.load(
        REPO / "conf/data/shapes.yaml").prepare.seed


def test_same_class_contacts_count_overlapping_and_touching_pairs_only():
    def square(x0, category_id=2):
        return {"category_id": category_id, "segmentation": [[x0, 2, x0 + 4, 2, x0 + 4, 6, x0, 6]]}
    # 2..6 and 6..10 share an edge (touching); 20..24 is apart; 22..26 overlaps it but is another class
    shapes = [square(2), square(6), square(20), square(22, category_id=1)]
    assert _same_class_contacts(shapes, 32) == 1
    assert _same_class_contacts(shapes[:1] + shapes[2:], 32) == 0
    assert _same_class_contacts([square(2), square(3)], 32) == 1  # overlapping


def test_training_data_has_same_class_instances_that_overlap_or_touch(tmp_path):
    """What makes instance segmentation harder than semantic: shapes of one class that meet."""
    summary = prepare(str(tmp_path / "s"), **{**TINY, "n_train": 60}, **_setting("shapes"))
    assert summary["splits"]["train"]["same_class_overlapping_or_touching_pairs"] >= 3
