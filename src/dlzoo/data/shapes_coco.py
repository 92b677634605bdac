"""Object detection and semantic segmentation on COCO-format data: generated "shapes", or your own.

`prepare` draws seeded, deterministic images of circles, squares and triangles (category ids 1, 2, 3)
of random size, colour and position on textured backgrounds (a colour gradient, smooth blotches and
pixel noise), and writes each split as a real COCO dataset:

    out_dir/{train,val,test}/images/000001.png ...
    out_dir/{train,val,test}/annotations.json      (loads with pycocotools.coco.COCO)

Annotation conventions (why they are what they are):

- `segmentation` is the *full* (amodal) outline of a shape as one polygon (a circle is a 32-gon),
  and `bbox` is that polygon's extent, so both describe the whole shape even where a later shape
  covers part of it. `area` is the polygon's (shoelace) area, consistent with `segmentation`; it
  is *not* the visible pixel count.
- Shapes are painted in annotation order, each one over the ones before it, and each shape's
  pixels are exactly the pixels pycocotools rasterises from its polygon. Rasterising the polygons
  in annotation order, later annotations over earlier ones (`rasterize_semantic_mask`), therefore
  reproduces the image's shape pixels exactly. (PIL's own polygon fill also paints the boundary
  pixels that pycocotools leaves out, 4-9% of a shape, which would make the masks disagree with the
  image along every edge.)
- Heavy occlusion is avoided: a new shape is rejected when its box IoU with an earlier one is above
  0.3 or when it would hide more than half of an earlier shape's pixels. A shape's colour keeps a
  distance from the background and the shapes it overlaps, so every annotated shape is visible.
  The colour is kept in each annotation (`color`, an extra key COCO tools ignore).

`validate_coco` checks any COCO file up front with errors that name the offending ids, and the
datasets and `ShapesDataModule` work on any COCO-format folder: every split can be pointed at a
user's own annotation file and image folder by config.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_convert, box_iou

from dlzoo.data.common import SplitDataModule, require_prepared
from dlzoo.io import write_json
from dlzoo.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})
CIRCLE_VERTICES = 32
MAX_BOX_IOU = 0.3  # a new shape may overlap an earlier one's box by at most this IoU ...
MIN_VISIBLE = 0.5  # ... and must leave at least this fraction of every earlier shape visible
MIN_CONTRAST = 80.0  # RGB distance of a shape's colour from what lies under it (best of 20 draws)
TASKS = ("detection", "segmentation")


# --------------------------------------------------------------------------------------- prepare


def prepare(
    out_dir: str,
    image_size: int = 128,
    n_train: int = 1200,
    n_val: int = 200,
    n_test: int = 300,
    min_objects: int = 1,
    max_objects: int = 4,
    seed: int = 0,
    min_size: int = 12,
    max_size: int = 48,
) -> dict:
    """Write the three splits as COCO datasets under `out_dir`; return counts per split and category.

    Shape sizes (side, diameter) are drawn from [min_size, min(max_size, image_size // 2)]. Each
    image has its own random stream, seeded by (seed, split, index), so an image does not change
    when the number of images in a split does.
    """
    if image_size < 16:
        raise ConfigError(f"data.prepare.image_size must be >= 16, got {image_size}")
    top = min(max_size, image_size // 2)
    if not 2 <= min_size <= top:
        raise ConfigError(
            f"data.prepare.min_size must be in [2, min(max_size, image_size // 2) = {top}], got {min_size}"
        )
    if not 0 <= min_objects <= max_objects or max_objects < 1:
        raise ConfigError(
            f"need 0 <= data.prepare.min_objects <= max_objects and max_objects >= 1, got {min_objects}, {max_objects}"
        )
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if n < 1:
            raise ConfigError(f"data.prepare.n_{split} must be >= 1, got {n}")

    out = Path(out_dir)
    summary: dict = {"name": "shapes", "image_size": image_size, "seed": seed, "splits": {}}
    for split_index, split in enumerate(SPLITS):
        split_dir = out / split
        if split_dir.exists():  # no stale images from an earlier, larger run
            shutil.rmtree(split_dir)
        (split_dir / "images").mkdir(parents=True)
        images, annotations = [], []
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, index])
            pixels, shapes = _render_image(rng, image_size, min_objects, max_objects, min_size, top)
            image_id = index + 1
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(split_dir / "images" / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for shape in shapes:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **shape})
        coco = {
            "info": {
                "description": "dlzoo shapes: circles, squares, triangles on textured backgrounds",
                "version": "1.0",
                "split": split,
                "seed": seed,
                "image_size": image_size,
                "segmentation": "full (amodal) polygons in draw order; paint later over earlier",
                "area": "polygon (shoelace) area of the full shape, not the visible pixels",
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{**c, "supercategory": "shape"} for c in CATEGORIES],
        }
        write_json(split_dir / "annotations.json", coco)
        per_category = {c["name"]: sum(a["category_id"] == c["id"] for a in annotations) for c in CATEGORIES}
        summary["splits"][split] = {"images": len(images), "annotations": len(annotations), "per_category": per_category}
    write_json(out / "summary.json", summary)
    return summary


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random two-colour gradient, smooth colour blotches and pixel noise: (size, size, 3) uint8."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / (t.max() - t.min() + 1e-9)
    base = c0 + t[..., None] * (c1 - c0)
    grid = int(rng.integers(3, 9))
    coarse = rng.normal(0.0, 1.0, (grid, grid, 3)).astype(np.float32)
    blotches = np.stack(
        [np.asarray(Image.fromarray(coarse[..., k]).resize((size, size), Image.BICUBIC)) for k in range(3)],
        axis=-1,
    )
    noise = rng.normal(0.0, rng.uniform(4, 16), (size, size, 3))
    return np.clip(base + rng.uniform(10, 40) * blotches + noise, 0, 255).astype(np.uint8)


def _outline(category_id: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (n, 2) of a shape around (0, 0): `size` is the square's side, circle's diameter,
    or the (equilateral, randomly rotated) triangle's side."""
    if category_id == 1:
        angles = 2 * math.pi * np.arange(CIRCLE_VERTICES) / CIRCLE_VERTICES
        radius = size / 2
    elif category_id == 2:
        h = size / 2
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    else:
        angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(3) / 3
        radius = size / math.sqrt(3)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _polygon_mask(flat: list[float], height: int, width: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    return mask_utils.decode(rle).astype(bool)


def _render_image(rng, size, min_objects, max_objects, min_size, max_size) -> tuple[np.ndarray, list[dict]]:
    """Paint shapes one by one over a background; return the pixels and their annotations (draw order)."""
    pixels = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)  # index of the shape visible at each pixel
    full_areas: list[int] = []
    colors: list[np.ndarray] = []
    boxes = torch.zeros((0, 4), dtype=torch.float64)
    shapes: list[dict] = []
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(100 * n_objects):
        if len(shapes) == n_objects:
            break
        category_id = int(rng.integers(1, 4))
        rel = _outline(category_id, rng.uniform(min_size, max_size), rng)
        lo, hi = rel.min(axis=0), rel.max(axis=0)
        # keep the whole shape at least 1 px inside the image
        center = rng.uniform(1 - lo, size - 1 - hi)
        poly = np.round(rel + center, 2)
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        box = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float64)
        if len(shapes) and float(box_iou(box, boxes).max()) > MAX_BOX_IOU:
            continue
        flat = poly.ravel().tolist()
        mask = _polygon_mask(flat, size, size)
        if not mask.any():
            continue
        lost = np.bincount(owner[mask] + 1, minlength=len(shapes) + 1)[1:]
        still_visible = np.bincount(owner.ravel() + 1, minlength=len(shapes) + 1)[1:] - lost
        if len(shapes) and (still_visible < MIN_VISIBLE * np.asarray(full_areas)).any():
            continue
        color = _pick_color(rng, pixels[mask], [colors[j] for j in np.flatnonzero(lost)])
        pixels[mask] = color
        owner[mask] = len(shapes)
        full_areas.append(int(mask.sum()))
        colors.append(color)
        boxes = torch.cat([boxes, box])
        shapes.append({
            "category_id": category_id,
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "area": round(_shoelace(poly), 2),
            "segmentation": [flat],
            "iscrowd": 0,
            "color": [int(c) for c in color],
        })
    if len(shapes) < min_objects:
        raise ConfigError(
            f"could not place {min_objects} shapes without heavy overlap in a {size}x{size} image: "
            f"lower data.prepare.min_objects or max_size, or raise image_size"
        )
    return pixels, shapes


def _pick_color(rng, under: np.ndarray, overlapped: list[np.ndarray]) -> np.ndarray:
    """The first of up to 20 random colours far enough from the background under the shape and the
    shapes it covers (else the farthest of them), so no annotated shape is invisible."""
    refs = [under.reshape(-1, 3).mean(axis=0)] + [c.astype(np.float64) for c in overlapped]
    best, best_dist = None, -1.0
    for _ in range(20):
        color = rng.integers(0, 256, 3).astype(np.uint8)
        dist = min(float(np.linalg.norm(color.astype(np.float64) - r)) for r in refs)
        if dist > best_dist:
            best, best_dist = color, dist
        if dist >= MIN_CONTRAST:
            break
    return best


def _shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


# ------------------------------------------------------------------------------------ validation


def _ids(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_coco(json_path: str | Path, image_dir: str | Path, check_files: bool = True) -> dict:
    """Load a COCO-format file and check it before any training starts; return the parsed dict.

    Raises DataError naming the problem and the offending ids: a malformed file otherwise fails
    deep inside a DataLoader worker (or, worse, trains on boxes that point outside the image).
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    where = str(json_path)
    if not json_path.is_file():
        raise DataError(f"COCO annotation file {where} not found")
    try:
        coco = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where} is not readable JSON: {e}") from None
    if not isinstance(coco, dict):
        raise DataError(f"{where}: top level must be a JSON object with images, annotations, categories")
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise DataError(f"{where}: missing top-level key(s) {', '.join(missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco[key], list):
            raise DataError(f"{where}: '{key}' must be a list, got {type(coco[key]).__name__}")

    required = {
        "images": ("id", "file_name", "width", "height"),
        "annotations": ("id", "image_id", "category_id", "bbox"),
        "categories": ("id", "name"),
    }
    for key, keys in required.items():
        bad = []
        for i, entry in enumerate(coco[key]):
            if not isinstance(entry, dict):
                bad.append(f"#{i} (not an object)")
                continue
            lacking = [k for k in keys if k not in entry]
            if lacking:
                bad.append(f"id {entry['id']}" if "id" in entry else f"#{i}")
                bad[-1] += f" lacks {'/'.join(lacking)}"
        if bad:
            raise DataError(f"{where}: {key} entries missing required keys ({', '.join(keys)}): {_ids(bad)}")

    for key, fields in (("images", ("id",)), ("annotations", ("id", "image_id", "category_id")), ("categories", ("id",))):
        bad = [f"#{i}" for i, e in enumerate(coco[key]) if not all(_is_int(e[f]) for f in fields)]
        if bad:
            raise DataError(f"{where}: {key} entries whose {'/'.join(fields)} are not integers: {_ids(bad)}")

    for key in ("images", "annotations", "categories"):
        seen, dupes = set(), []
        for entry in coco[key]:
            if entry["id"] in seen and entry["id"] not in dupes:
                dupes.append(entry["id"])
            seen.add(entry["id"])
        if dupes:
            singular = {"images": "image", "annotations": "annotation", "categories": "category"}[key]
            raise DataError(f"{where}: duplicate {singular} ids {_ids(dupes)}")

    bad = [im["id"] for im in coco["images"] if not all(_is_number(im[k]) and im[k] > 0 for k in ("width", "height"))]
    if bad:
        raise DataError(f"{where}: images with width/height that are not positive numbers: ids {_ids(bad)}")

    images = {im["id"]: im for im in coco["images"]}
    category_ids = {c["id"] for c in coco["categories"]}
    anns = coco["annotations"]
    bad = [a["id"] for a in anns if a["image_id"] not in images]
    if bad:
        raise DataError(f"{where}: annotations with an image_id not in images: ids {_ids(bad)}")
    bad = [a["id"] for a in anns if a["category_id"] not in category_ids]
    if bad:
        raise DataError(f"{where}: annotations with a category_id not in categories: ids {_ids(bad)}")
    bad = [a["id"] for a in anns if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4 and all(map(_is_number, a["bbox"])))]
    if bad:
        raise DataError(f"{where}: annotations whose bbox is not 4 numbers [x, y, w, h]: ids {_ids(bad)}")
    bad = [a["id"] for a in anns if a["bbox"][2] <= 0 or a["bbox"][3] <= 0]
    if bad:
        raise DataError(f"{where}: annotations with bbox width or height <= 0: ids {_ids(bad)}")
    tol = 1.0
    bad = []
    for a in anns:
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        if x < -tol or y < -tol or x + w > im["width"] + tol or y + h > im["height"] + tol:
            bad.append(a["id"])
    if bad:
        raise DataError(f"{where}: annotations with bbox outside their image (1 px tolerance): ids {_ids(bad)}")
    bad = [a["id"] for a in anns if "segmentation" in a and not _segmentation_ok(a["segmentation"])]
    if bad:
        raise DataError(
            f"{where}: annotations whose segmentation is neither polygons [[x1, y1, x2, y2, x3, y3, ...], ...] "
            f"nor an RLE {{'size', 'counts'}}: ids {_ids(bad)}"
        )

    if check_files:
        if not image_dir.is_dir():
            raise DataError(f"image folder {image_dir} (for {where}) not found")
        lost = [f"{im['id']} ({im['file_name']})" for im in coco["images"] if not (image_dir / im["file_name"]).is_file()]
        if lost:
            raise DataError(f"{where}: image files missing in {image_dir}: ids {_ids(lost)}")
    return coco


def _segmentation_ok(seg) -> bool:
    if isinstance(seg, dict):
        return "size" in seg and "counts" in seg
    return (
        isinstance(seg, list)
        and len(seg) > 0
        and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p)) for p in seg)
    )


# ---------------------------------------------------------------------------------------- masks


def _annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    seg = ann.get("segmentation")
    if not seg:
        raise DataError(f"annotation {ann.get('id')} has no segmentation: a segmentation mask needs polygons or RLE")
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    if list(rle["size"]) != [height, width]:
        raise DataError(f"annotation {ann.get('id')}: RLE size {rle['size']} is not the image's {height}x{width}")
    return mask_utils.decode(rle).astype(bool)


def _paint(anns: list[dict], height: int, width: int, value_of) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.int64)
    for ann in anns:  # in order: later annotations over earlier ones, as they were drawn
        mask[_annotation_mask(ann, height, width)] = value_of(ann["category_id"])
    return mask


def rasterize_semantic_mask(coco, image_id: int, height: int, width: int) -> np.ndarray:
    """(height, width) int64 mask of `image_id`: 0 = background, else the category id.

    `coco` is a COCO dict or a `pycocotools.coco.COCO`. Annotations are painted in file order,
    later over earlier, which reproduces the generated shapes images exactly.
    """
    if hasattr(coco, "imgToAnns"):  # pycocotools.coco.COCO keeps file order per image
        if image_id not in coco.imgs:
            raise DataError(f"image id {image_id} is not in the COCO dataset")
        anns = coco.imgToAnns[image_id]
    else:
        if not any(im["id"] == image_id for im in coco["images"]):
            raise DataError(f"image id {image_id} is not in the COCO dataset")
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
    return _paint(anns, height, width, lambda c: c)


# ------------------------------------------------------------------------------------- datasets


class _CocoImages(Dataset):
    """Images of one COCO file, in file order, with their annotations in file order.

    Labels are contiguous: label i (1..K) is the i-th category by ascending id, 0 is background,
    so a user's COCO ids with gaps (e.g. 1..90) still fit a K+1-way head. For the shapes data
    (ids 1, 2, 3) labels equal category ids. `cache` keeps decoded uint8 images (and targets) in
    memory: small datasets load once; turn it off for large ones.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, cache: bool = True, coco: dict | None = None):
        self.json_path, self.image_dir = Path(json_path), Path(image_dir)
        self.coco = coco if coco is not None else validate_coco(json_path, image_dir)
        self.images = list(self.coco["images"])
        cats = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in cats]
        self.category_names = ["background"] + [c["name"] for c in cats]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.anns: dict = {im["id"]: [] for im in self.images}
        for ann in self.coco["annotations"]:
            self.anns[ann["image_id"]].append(ann)
        self.cache = cache
        self._pixels = [self._load_pixels(i) for i in range(len(self.images))] if cache else None

    def __len__(self) -> int:
        return len(self.images)

    def _load_pixels(self, index: int) -> np.ndarray:
        im = self.images[index]
        path = self.image_dir / im["file_name"]
        try:
            with Image.open(path) as f:
                rgb = np.array(f.convert("RGB"))
        except OSError as e:
            raise DataError(f"cannot read image {path} (id {im['id']}): {e}") from None
        if rgb.shape[:2] != (im["height"], im["width"]):
            raise DataError(
                f"image {path} (id {im['id']}) is {rgb.shape[1]}x{rgb.shape[0]} but {self.json_path} "
                f"says {im['width']}x{im['height']}"
            )
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def image(self, index: int) -> torch.Tensor:
        """Float [3, H, W] in [0, 1]."""
        pixels = self._pixels[index] if self._pixels is not None else self._load_pixels(index)
        # numpy, not torch: torch's thread pool costs milliseconds per tiny op on a busy 2-core machine
        out = pixels.astype(np.float32)
        out /= 255
        return torch.from_numpy(out)


class CocoDetectionDataset(_CocoImages):
    """(image [3, H, W] float in [0, 1], {"boxes": [N, 4] xyxy float, "labels": [N] int64, "image_id": int}).

    Crowd annotations (iscrowd=1) are left out, as torchvision's detection references do.
    """

    def __init__(self, json_path, image_dir, cache: bool = True, coco: dict | None = None):
        super().__init__(json_path, image_dir, cache=cache, coco=coco)
        self.targets = [self._target(im) for im in self.images]

    def _target(self, im: dict) -> dict:
        anns = [a for a in self.anns[im["id"]] if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": box_convert(xywh, in_fmt="xywh", out_fmt="xyxy"),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": int(im["id"]),
        }

    def __getitem__(self, index: int):
        t = self.targets[index]
        return self.image(index), {"boxes": t["boxes"].clone(), "labels": t["labels"].clone(), "image_id": t["image_id"]}


class CocoSegmentationDataset(_CocoImages):
    """(image [3, H, W] float in [0, 1], mask [H, W] int64: 0 = background, else the label)."""

    def __init__(self, json_path, image_dir, cache: bool = True, coco: dict | None = None):
        super().__init__(json_path, image_dir, cache=cache, coco=coco)
        dtype = np.uint8 if len(self.category_ids) < 255 else np.int64
        self._masks = [self._mask(i).astype(dtype) for i in range(len(self))] if cache else None

    def _mask(self, index: int) -> np.ndarray:
        im = self.images[index]
        return _paint(self.anns[im["id"]], im["height"], im["width"], self.label_of.__getitem__)

    def __getitem__(self, index: int):
        mask = self._masks[index] if self._masks is not None else self._mask(index)
        return self.image(index), torch.from_numpy(mask.astype(np.int64))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.from_numpy(np.stack([t.numpy() for t in tensors]))  # see _CocoImages.image


def detection_collate(batch):
    """(images, targets): images stacked into [B, 3, H, W] when all have one size, else a list."""
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    if len({tuple(i.shape) for i in images}) == 1:
        return _stack(images), targets
    return images, targets


def segmentation_collate(batch):
    """(images [B, 3, H, W], masks [B, H, W]); the DataModule checks the sizes agree up front."""
    return _stack([b[0] for b in batch]), _stack([b[1] for b in batch])


# ---------------------------------------------------------------------------------- datamodule


class ShapesDataModule(SplitDataModule):
    """Detection or segmentation batches from COCO folders: the prepared shapes data by default,
    `data_dir/{split}/annotations.json` + `data_dir/{split}/images`; set `<split>_json` and
    `<split>_images` to use your own COCO dataset for that split instead.

    `setup` validates every split it needs (fit: train + val; validate: val; test/predict: test)
    before decoding any image. `num_classes` = categories + 1 (background); `category_names[label]`.
    """

    def __init__(
        self,
        data_dir: str,
        task: str = "detection",
        batch_size: int = 16,
        num_workers: int = 0,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        cache: bool = True,
    ):
        super().__init__(batch_size, num_workers)
        if task not in TASKS:
            raise ConfigError(f"data.module.task must be one of {', '.join(TASKS)}, got '{task}'")
        if batch_size < 1:
            raise ConfigError(f"data.module.batch_size must be >= 1, got {batch_size}")
        self.data_dir, self.task, self.cache = data_dir, task, cache
        self.collate_fn = detection_collate if task == "detection" else segmentation_collate
        given = {"train": (train_json, train_images), "val": (val_json, val_images), "test": (test_json, test_images)}
        for split, (js, imgs) in given.items():
            if (js is None) != (imgs is None):
                raise ConfigError(f"data.module.{split}_json and {split}_images go together: set both or neither")
        self.custom = {s: (Path(js), Path(imgs)) for s, (js, imgs) in given.items() if js is not None}
        self._categories: list[tuple] | None = None

    def paths(self, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) of a split; for the prepared data, checks it exists."""
        if split in self.custom:
            return self.custom[split]
        root = require_prepared(self.data_dir, f"{split}/annotations.json", f"{split}/images")
        return root / split / "annotations.json", root / split / "images"

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, SPLITS)
        todo = [s for s in wanted if s not in self.datasets]
        parsed = {}
        for split in todo:  # every split is checked before any image is decoded
            json_path, image_dir = self.paths(split)
            parsed[split] = validate_coco(json_path, image_dir)
        for split in todo:
            self._check_categories(split, parsed[split])
            if self.task == "segmentation" and self.batch_size > 1:
                sizes = {(im["width"], im["height"]) for im in parsed[split]["images"]}
                if len(sizes) > 1:
                    raise DataError(
                        f"{self.paths(split)[0]}: images differ in size ({_ids(sorted(sizes))}); segmentation batches "
                        f"need one size: resize the images or set data.module.batch_size=1"
                    )
        cls = CocoDetectionDataset if self.task == "detection" else CocoSegmentationDataset
        for split in todo:
            json_path, image_dir = self.paths(split)
            self.datasets[split] = cls(json_path, image_dir, cache=self.cache, coco=parsed[split])

    def _check_categories(self, split: str, coco: dict) -> None:
        cats = sorted((c["id"], c["name"]) for c in coco["categories"])
        if self._categories is None:
            self._categories = cats
        elif cats != self._categories:
            raise DataError(
                f"{self.paths(split)[0]}: categories {cats} differ from the other splits' {self._categories}; "
                f"labels would mean different things per split"
            )

    def _ensure_categories(self) -> list[tuple]:
        if self._categories is None:  # before setup: read them from the training split
            json_path, image_dir = self.paths("train")
            self._check_categories("train", validate_coco(json_path, image_dir, check_files=False))
        return self._categories

    @property
    def num_classes(self) -> int:
        """Categories + 1 for background."""
        return len(self._ensure_categories()) + 1

    @property
    def category_names(self) -> list[str]:
        """Name of each label: index 0 is "background", label i the i-th category by id."""
        return ["background"] + [name for _, name in self._ensure_categories()]

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of label i at index i - 1 (to map predictions back for COCO evaluation)."""
        return [cid for cid, _ in self._ensure_categories()]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:  # set up on demand, e.g. a test loader asked for after fit
            self.setup({"train": "fit", "val": "validate"}.get(split, "test"))
        return super()._loader(split, shuffle)
