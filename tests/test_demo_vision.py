"""The demo's "Detect and segment" tab, model side (dlzoo.demo.vision): fresh shapes images per seed, uploads read
or refused with a line naming the file, each family's network (built as its recipe builds it, untrained) giving what
the evaluate stage's own prediction code gives on the same image, and the pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config
from dlzoo.config import build
from dlzoo.demo import vision
from dlzoo.errors import DataError
from dlzoo.evaluation import detection as detection_eval
from dlzoo.evaluation import instance as instance_eval

DETECTORS = ("ssd", "yolo-anchor-free", "yolov3")
NAMES = {"circle", "square", "triangle"}


def _cfg(experiment: str):
    return compose_config(f"experiment={experiment}", "profile=smoke")


def _module(cfg):
    """The recipe's LightningModule, as the train runner builds it, untrained (seeded)."""
    torch.manual_seed(0)
    module = build(cfg.model, "model").eval()
    net = module.net
    # untrained YOLO heads start at ~1% objectness, under the decoders' score floor: raise it so boxes come out
    if hasattr(net, "pred"):
        net.pred.bias.data[0] = 2.0
    for head in getattr(net, "heads", []):
        head[-1].bias.data.view(3, -1)[:, 4] = 2.0
    return module


def _tensor(image: np.ndarray) -> torch.Tensor:
    """A test image as the data module serves it (dlzoo.data.coco: uint8 / 255)."""
    return torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255)


@pytest.fixture(scope="module")
def ssd_cfg():
    return _cfg("detection-shapes-ssd")


# ----------------------------------------------------------------------------------------- images in


def test_shapes_image_is_fixed_by_its_seed(ssd_cfg):
    a, b, c = vision.shapes_image(ssd_cfg, 7), vision.shapes_image(ssd_cfg, 7), vision.shapes_image(ssd_cfg, 8)
    size = ssd_cfg.data.prepare.image_size
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 100  # a textured background, not a blank canvas


def test_read_image_converts_and_fits_the_network_input(ssd_cfg, tmp_path):
    size = vision.input_size(ssd_cfg)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 90), 200, np.uint8)).save(grey)  # wide and grey: central square, RGB
    out = vision.read_image(str(grey), ssd_cfg)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and (out == 200).all()
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[:10, :, 3] = 0  # transparent rows: shown over white
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    out = vision.read_image(path, ssd_cfg)
    assert out.shape == (size, size, 3) and (out[:10] == 255).all() and (out[10:] == (255, 0, 0)).all()
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(vision.shapes_image(ssd_cfg, 1)).save(jpeg)
    assert vision.read_image(jpeg, ssd_cfg).shape == (size, size, 3)
    assert vision.read_image(np.zeros((300, 200, 3), np.uint8), ssd_cfg).shape == (size, size, 3)


@pytest.mark.parametrize("case", ["text", "empty", "too many pixels", "too many bytes"])
def test_read_image_refuses_what_is_not_a_usable_image_naming_the_file(case, ssd_cfg, tmp_path):
    path = tmp_path / f"upload-{case.replace(' ', '-')}.png"
    if case == "text":
        path.write_text("not an image, only some text\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "too many pixels":
        Image.fromarray(np.zeros((2, vision.MAX_SIDE + 1, 3), np.uint8)).save(path)  # a small file, too wide
    else:
        with open(path, "wb") as f:  # sparse: no disk written
            f.truncate(vision.MAX_BYTES + 1)
    with pytest.raises(DataError) as info:
        vision.read_image(str(path), ssd_cfg)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_read_image_refuses_an_empty_or_oversized_array(ssd_cfg):
    for array in (np.zeros((0, 5, 3), np.uint8), np.zeros((vision.MAX_SIDE + 1, 2), np.uint8)):
        with pytest.raises(DataError, match="the image"):
            vision.read_image(array, ssd_cfg)


# ----------------------------------------------------------------------------------------- networks


def _check_boxes(found: list[dict], size: int) -> None:
    for d in found:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= size and 0 <= y0 <= y1 <= size
        assert d["label"] in NAMES and isinstance(d["score"], float)
    scores = [d["score"] for d in found]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("family", DETECTORS)
def test_detect_gives_the_evaluate_stage_detections(family):
    cfg = _cfg(f"detection-shapes-{family}")
    module = _module(cfg)
    image = vision.shapes_image(cfg, 3)
    found = vision.detect(module.net, cfg, image, min_score=0.0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _, (pred,), _ = detection_eval.predict(module, [(_tensor(image)[None], [empty])])
    assert len(found) == len(pred["scores"]) > 0
    assert np.allclose([d["box"] for d in found], pred["boxes"].numpy(), atol=1e-4)
    assert np.allclose([d["score"] for d in found], pred["scores"].numpy(), atol=1e-6)
    names = vision.class_names(cfg)
    assert [d["label"] for d in found] == [names[k] for k in pred["labels"].tolist()]
    _check_boxes(found, image.shape[0])
    threshold = float(np.median([d["score"] for d in found]))
    assert vision.detect(module.net, cfg, image, min_score=threshold) == [d for d in found if d["score"] >= threshold]

    picture = vision.draw_boxes(image, found[:5], names)
    assert picture.shape == image.shape and picture.dtype == np.uint8 and not np.array_equal(picture, image)
    assert np.array_equal(vision.draw_boxes(image, []), image)
    annotated, rows = vision.annotate(module.net, cfg, image, min_score=0.0)
    assert rows == found and annotated.shape == image.shape and annotated.dtype == np.uint8


def test_instances_give_the_evaluate_stage_masks():
    cfg = _cfg("instance-shapes-maskrcnn")
    module = _module(cfg)
    image = vision.shapes_image(cfg, 3)
    found = vision.instances(module.net, cfg, image, min_score=0.0)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, *image.shape[:2], dtype=torch.uint8)}
    _, (pred,), _ = instance_eval.predict(module, [(_tensor(image)[None], [target])])
    assert len(found) == len(pred["scores"]) > 0
    assert np.allclose([d["box"] for d in found], pred["boxes"].numpy(), atol=1e-4)
    assert np.allclose([d["score"] for d in found], pred["scores"].numpy(), atol=1e-6)
    for d, mask in zip(found, pred["masks"].numpy()):
        assert d["mask"].dtype == bool and d["mask"].shape == image.shape[:2] and np.array_equal(d["mask"], mask)
    _check_boxes(found, image.shape[0])

    picture = vision.draw_instances(image, found[:4])
    assert picture.shape == image.shape and picture.dtype == np.uint8 and not np.array_equal(picture, image)
    rows = vision.annotate(module.net, cfg, image, min_score=0.0)[1]
    assert [r["score"] for r in rows] == [d["score"] for d in found] and "mask" not in rows[0]


def test_segment_gives_the_evaluate_stage_class_map():
    cfg = _cfg("segmentation-shapes-unet")
    module = _module(cfg)
    image = vision.shapes_image(cfg, 3)
    classes = vision.segment(module.net, cfg, image)
    with torch.no_grad():
        expected = module(_tensor(image)[None]).argmax(dim=1)[0].numpy()  # as dlzoo.evaluation.segmentation
    assert classes.shape == image.shape[:2] and np.array_equal(classes, expected)
    # what the train stage registers for the U-Net: a torch.export program as mlflow exports it (any batch, the
    # training size only) that refuses eval()
    program = torch.export.export(module.net.eval(), (torch.rand(2, 3, *image.shape[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
    assert np.array_equal(vision.segment(program, cfg, image), expected)
    wide = np.ascontiguousarray(np.concatenate([image, image[:, :32]], axis=1))
    assert vision.segment(program, cfg, wide).shape == wide.shape[:2]  # resized to the program's size and back

    rows = vision.annotate(module.net, cfg, image)[1]
    assert sum(r["pixels"] for r in rows) == classes.size and {r["label"] for r in rows} <= NAMES | {"background"}

    mask = np.zeros(image.shape[:2], dtype=np.int64)
    mask[10:40, 10:40], mask[60:90, 60:90] = 1, 3
    picture = vision.draw_mask(image, mask)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert np.array_equal(picture[mask == 0], image[mask == 0]) and not np.array_equal(picture, image)


def test_a_pickled_detector_answers_after_an_mlflow_round_trip(tmp_path):
    """The train stage logs detectors pickled: the demo's `mlflow.pytorch.load_model` gives the same answers."""
    import mlflow.pytorch

    cfg = _cfg("detection-shapes-yolov3")
    net = _module(cfg).net
    mlflow.pytorch.save_model(net, str(tmp_path / "model"), serialization_format="pickle", pip_requirements=["torch"])
    loaded = mlflow.pytorch.load_model(str(tmp_path / "model"))
    image = vision.shapes_image(cfg, 5)
    assert vision.detect(loaded, cfg, image, 0.0) == vision.detect(net, cfg, image, 0.0) != []
