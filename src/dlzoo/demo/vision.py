"""The model side of the demo's "Detect and segment" tab: a shapes image (drawn fresh or uploaded) in, the champion's
boxes, instance masks or class map out, and the picture of each.

`net` is what `mlflow.pytorch.load_model` returns for a champion (the train stage's bare network: a pickled
detector or Mask R-CNN, or the U-Net's torch.export program) and `cfg` the train run's resolved config (its
`config.yaml`, loaded with OmegaConf). Every network takes what the data module serves a test image
(dlzoo/data/coco.py): RGB float32 (3, H, W) in [0, 1], batched. The detectors and Mask R-CNN resize and normalise
inside (their `transform`: (x - 0.5) / 0.25 at `model.net.size`) and decode their own outputs in eval mode (the
YOLO families' objectness x class score, per-class NMS; torchvision's SSD and Mask R-CNN post-processing), returning
boxes in the input's pixels; the U-Net takes the pixels as they are and gives per-pixel logits. So each function
here calls the network exactly as the evaluate stage does (dlzoo/evaluation/detection.py, instance.py,
segmentation.py) and only filters by score and names the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dlzoo.errors import ConfigError, DataError

MAX_SIDE = 4096                   # widest or tallest upload read, in pixels
MAX_BYTES = 20 * 1024 * 1024      # largest upload file read
DEMO_STREAM = 3                   # the generator's split index for demo images: 0-2 are train, val, test


# ----------------------------------------------------------------------------- what the recipe says
def input_size(cfg) -> int:
    """The side of the square images the network was trained on: the detectors state it, else the data's size."""
    size = OmegaConf.select(cfg, "model.net.size", default=None)
    return int(size or OmegaConf.select(cfg, "data.prepare.image_size", default=None) or 128)


def class_names(cfg) -> list[str]:
    """Name of each label (index 0 background): the evaluator's names if the recipe sets them, else the shapes'."""
    from dlzoo.data.shapes import CATEGORIES

    names = OmegaConf.select(cfg, "evaluator.class_names", default=None) if cfg is not None else None
    if names:
        return [str(n) for n in names]
    return ["background"] + [c["name"] for c in sorted(CATEGORIES, key=lambda c: c["id"])]


def _name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else f"class {label}"


# ----------------------------------------------------------------------------- images in
def shapes_image(cfg, seed: int) -> np.ndarray:
    """A fresh (H, W, 3) uint8 image from the shapes generator with the recipe's settings, deterministic per seed;
    its random stream is the generator's own layout on a split index no prepared split uses, so it is never a
    training, validation or test image."""
    from dlzoo.data.shapes import DEFAULT_STYLE, _render_image

    prepare = OmegaConf.select(cfg, "data.prepare", default=None)
    if prepare is None:
        raise ConfigError("this recipe has no data.prepare (shapes generator settings): upload an image instead")
    settings = OmegaConf.to_container(prepare, resolve=True)
    size = int(settings.get("image_size", 128))
    top = min(int(settings.get("max_size", 48)), size // 2)
    style = {k: settings.get(k, v) for k, v in DEFAULT_STYLE.items()}
    rng = np.random.default_rng([int(settings.get("seed", 0)), DEMO_STREAM, int(seed)])
    pixels, _ = _render_image(rng, size, int(settings.get("min_objects", 1)), int(settings.get("max_objects", 4)),
                              int(settings.get("min_size", 12)), top, **style)
    return pixels


def _rgb(array: np.ndarray, name: str) -> np.ndarray:
    """An array image as (H, W, 3) uint8: grey and RGBA (over white) to RGB, floats in [0, 1] (or 0-255) to bytes."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise DataError(f"{name}: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.size == 0:
        raise DataError(f"{name}: empty image ({array.shape[1]}x{array.shape[0]} pixels)")
    if max(array.shape[:2]) > MAX_SIDE:
        raise DataError(f"{name}: {array.shape[1]}x{array.shape[0]} pixels, the demo reads at most {MAX_SIDE} a side")
    if array.dtype != np.uint8:
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{name}: the image has NaN or infinite values")
        if values.max(initial=0) <= 1.0:
            values = values * 255
        array = np.clip(np.round(values), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.shape[-1] == 4:
        alpha = array[..., 3:].astype(np.float64) / 255
        array = np.round(array[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)


def _open(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8, checked before its pixels are decoded; DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    n_bytes = path.stat().st_size
    if n_bytes == 0:
        raise DataError(f"{path}: empty file, not an image")
    if n_bytes > MAX_BYTES:
        raise DataError(f"{path}: {n_bytes / 2**20:.1f} MB, the demo reads images of at most {MAX_BYTES // 2**20} MB")
    try:
        with Image.open(path) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width == 0 or height == 0:
                raise DataError(f"{path}: empty image ({width}x{height} pixels)")
            if max(width, height) > MAX_SIDE:
                raise DataError(f"{path}: {width}x{height} pixels, the demo reads at most {MAX_SIDE} a side")
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float greys: scaled to 8 bits
                grey = np.asarray(image, dtype=np.float64)
                return _rgb(grey / max(float(grey.max()), 1e-12), str(path))
            has_alpha = "A" in image.mode or "transparency" in image.info
            return _rgb(np.asarray(image.convert("RGBA" if has_alpha else "RGB")), str(path))
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise DataError(f"{path}: not an image file the demo can read (PNG, JPEG, ...)") from None
    except OSError as exc:  # a truncated or damaged file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: unreadable image ({reason})") from None


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """The central square of an image resized to size x size: the network's training images are square, and a
    squashed circle or square is a shape it never saw."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))


def read_image(source, cfg) -> np.ndarray:
    """An uploaded file (path) or an image array as (H, W, 3) uint8 at the network's input size, or a one-line
    DataError naming the file: not an image, empty, more than MAX_SIDE pixels a side or MAX_BYTES."""
    if isinstance(source, (str, Path)):
        image = _open(Path(source))
    elif isinstance(source, np.ndarray):
        image = _rgb(source, "the image")
    elif hasattr(source, "convert"):  # a PIL image
        image = _rgb(np.asarray(source.convert("RGBA")), "the image")
    else:
        raise DataError(f"expected an image file path or array, got {type(source).__name__}")
    return fit(image, input_size(cfg))


# ----------------------------------------------------------------------------- the networks
def _batch(net, image: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1], computed as the data module computes a test image, on the net's device."""
    pixels = np.ascontiguousarray(_rgb(image, "the image").transpose(2, 0, 1)).astype(np.float32)
    pixels /= 255
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    return torch.from_numpy(pixels)[None].to(device)


def _eval(net) -> None:
    """Eval mode for a pickled module; an exported program was exported in eval mode and refuses eval()."""
    try:
        net.eval()
    except NotImplementedError:
        pass


def _run(net, image: np.ndarray):
    _eval(net)
    with torch.no_grad():
        return net(_batch(net, image))


def detect(net, cfg, image: np.ndarray, min_score: float = 0.3) -> list[dict]:
    """Boxes [x0, y0, x1, y1] in the image's pixels, class names and scores at or above `min_score`, best first:
    the evaluate stage's detections (SSD, YOLO anchor-free, YOLOv3) of this one image."""
    pred = _run(net, image)[0]
    names = class_names(cfg)
    keep = pred["scores"] >= min_score
    return [{"box": [float(v) for v in box], "label": _name(names, int(label)), "score": float(score)}
            for box, label, score in zip(pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(),
                                         pred["scores"][keep].tolist())]


def instances(net, cfg, image: np.ndarray, min_score: float = 0.3) -> list[dict]:
    """Mask R-CNN's detections at or above `min_score` with each one's (H, W) bool mask, binarised at 0.5 as the
    evaluate stage scores them."""
    from dlzoo.models.maskrcnn import instance_metric_prediction

    pred = instance_metric_prediction(_run(net, image)[0])
    names = class_names(cfg)
    keep = pred["scores"] >= min_score
    masks = pred["masks"][keep].cpu().numpy()
    return [{"box": [float(v) for v in box], "label": _name(names, int(label)), "score": float(score), "mask": mask}
            for box, label, score, mask in zip(pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(),
                                               pred["scores"][keep].tolist(), masks)]


def segment(net, cfg, image: np.ndarray) -> np.ndarray:
    """(H, W) int64 class ids (0 background): the argmax of the U-Net's logits. An exported program takes only
    its training size, so another size is resized to it and the class map resized back (nearest)."""
    image = _rgb(image, "the image")
    h, w = image.shape[:2]
    size = input_size(cfg)
    resized = (h, w) != (size, size)
    if resized:
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    classes = _run(net, image).argmax(dim=1)[0].cpu().numpy().astype(np.int64)
    if resized:
        from PIL import Image

        classes = np.asarray(Image.fromarray(classes.astype(np.int32)).resize((w, h), Image.NEAREST)).astype(np.int64)
    return classes


# ----------------------------------------------------------------------------- pictures
def _palette(n: int) -> list[tuple[int, int, int]]:
    """n colours, the evaluation plots' own (tab10 from its second colour; index 0 is background, never drawn)."""
    from dlzoo.evaluation.segmentation import class_colors

    return [tuple(int(round(255 * c)) for c in rgb) for rgb in class_colors(max(n, 2))]


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(_rgb(image, "the image")).permute(2, 0, 1).contiguous()


def _picture(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())


def _boxes(tensor: torch.Tensor, found: list[dict], colours: list) -> torch.Tensor:
    from torchvision.utils import draw_bounding_boxes

    if not found:
        return tensor
    boxes = torch.tensor([d["box"] for d in found], dtype=torch.float32).reshape(-1, 4)
    labels = [f"{d['label']} {d['score']:.2f}" if "score" in d else str(d["label"]) for d in found]
    return draw_bounding_boxes(tensor, boxes, labels=labels, colors=colours, width=2, label_colors="white",
                               fill_labels=True)  # white text on the box colour: readable on any background


def _class_colours(labels: list[str], names: list[str] | None) -> list[tuple[int, int, int]]:
    """One colour per class name, the one `draw_mask` gives its label (names not in `names` after them)."""
    names = list(names) if names is not None else class_names(None)
    order = names + sorted(set(labels) - set(names))
    palette = _palette(len(order))
    return [palette[order.index(label)] for label in labels]


def draw_boxes(image: np.ndarray, detections: list[dict], names: list[str] | None = None) -> np.ndarray:
    """The image with each detection's box and "label score", one colour per class (`names`: `class_names(cfg)`,
    by default the shapes')."""
    colours = _class_colours([d["label"] for d in detections], names)
    return _picture(_boxes(_tensor(image), detections, colours))


def draw_instances(image: np.ndarray, found: list[dict]) -> np.ndarray:
    """The image with each instance's mask in its own colour (instances of one class told apart) and its box."""
    from torchvision.utils import draw_segmentation_masks

    tensor = _tensor(image)
    if not found:
        return _picture(tensor)
    colours = [_palette(11)[1 + k % 10] for k in range(len(found))]
    masks = torch.from_numpy(np.stack([np.asarray(d["mask"], dtype=bool) for d in found]))
    tensor = draw_segmentation_masks(tensor, masks, alpha=0.5, colors=colours)
    return _picture(_boxes(tensor, found, colours))


def draw_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with each class's pixels tinted in the evaluation plots' colour for it; background left as is."""
    from torchvision.utils import draw_segmentation_masks

    tensor = _tensor(image)
    mask = np.asarray(mask)
    if mask.shape != tuple(tensor.shape[1:]):
        raise DataError(f"the class map is {mask.shape}, the image {tuple(tensor.shape[1:])}")
    labels = [int(k) for k in np.unique(mask) if k > 0]
    if not labels:
        return _picture(tensor)
    palette = _palette(max(labels) + 1)
    masks = torch.from_numpy(np.stack([mask == k for k in labels]))
    return _picture(draw_segmentation_masks(tensor, masks, alpha=0.55, colors=[palette[k] for k in labels]))


# ----------------------------------------------------------------------------- one call per task
def annotate(net, cfg, image: np.ndarray, min_score: float = 0.3) -> tuple[np.ndarray, list[dict]]:
    """The picture and the table rows of the task the recipe names (`cfg.task`): detections, instances (without
    their masks) or each class's share of the pixels."""
    task = str(OmegaConf.select(cfg, "task", default=""))
    if task.startswith("detection"):
        found = detect(net, cfg, image, min_score)
        return draw_boxes(image, found, class_names(cfg)), found
    if task.startswith("instance"):
        found = instances(net, cfg, image, min_score)
        return draw_instances(image, found), [{k: v for k, v in d.items() if k != "mask"} for d in found]
    if task.startswith("segmentation"):
        classes = segment(net, cfg, image)
        names = class_names(cfg)
        counts = np.bincount(classes.ravel(), minlength=len(names))
        rows = [{"label": _name(names, k), "pixels": int(n), "share": float(n / classes.size)}
                for k, n in enumerate(counts) if n]
        return draw_mask(image, classes), rows
    raise ConfigError(f"task '{task}' is not a detection, instance or segmentation task")
