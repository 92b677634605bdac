"""The synthetic "shapes" dataset (DVC stage `prepare_shapes`): circles, squares and triangles on
textured backgrounds, written as real COCO datasets that `dlzoo.data.coco` (or pycocotools) reads.

`prepare` draws seeded, deterministic images of circles, squares and triangles (category ids 1, 2, 3)
of random size, colour, position and (with `rotate_squares`, as conf/data/shapes.yaml sets) rotation on
textured backgrounds, optionally under strokes that are not objects (see `prepare` for the settings),
and writes each split in the layout `coco.CocoDataModule` reads by default:

    out_dir/{train,val,test}/images/000001.png ...
    out_dir/{train,val,test}/annotations.json      (loads with pycocotools.coco.COCO)

Annotation conventions (why they are what they are):

- `segmentation` is the *full* (amodal) outline of a shape as one polygon (a circle is a 32-gon),
  and `bbox` is that polygon's extent, so both describe the whole shape even where a later shape
  covers part of it. `area` is the polygon's (shoelace) area, consistent with `segmentation`; it
  is *not* the visible pixel count.
- Shapes are painted in annotation order, each one over the ones before it, and each shape's
  pixels are exactly the pixels pycocotools rasterises from its polygon (`coco.polygons_mask`).
  Rasterising the polygons in annotation order, later annotations over earlier ones
  (`coco.rasterize_semantic_mask`), therefore reproduces the image's shape pixels exactly. (PIL's
  own polygon fill also paints the boundary pixels that pycocotools leaves out, 4-9% of a shape,
  which would make the masks disagree with the image along every edge.)
- Heavy occlusion is avoided: a new shape is rejected when its box IoU with an earlier one is above
  0.3 or when it would hide more than half of an earlier shape's pixels. A shape's colour keeps a
  distance from the background and the shapes it overlaps, so every annotated shape is visible.
  The colour is kept in each annotation (`color`, an extra key COCO tools ignore).
- No crowd annotations: every shape is one object (iscrowd=0).
- Shapes of one class may overlap (within the limits above) or touch; `summary.json` counts those pairs
  per split (`same_class_overlapping_or_touching_pairs`): instance masks must split what a semantic mask merges.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_iou

from dlzoo.data.coco import SPLITS, polygons_mask, split_paths, validate_coco
from dlzoo.errors import ConfigError
from dlzoo.io import write_json

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})
CIRCLE_VERTICES = 32
MAX_BOX_IOU = 0.3  # a new shape may overlap an earlier one's box by at most this IoU ...
MIN_VISIBLE = 0.5  # ... and must leave at least this fraction of every earlier shape visible
MIN_CONTRAST = 80.0  # RGB distance of a shape's colour from what lies under it (best of 20 draws)
BACKGROUNDS = ("gradient", "stripes", "mixed", "clouds")  # mixed: gradient or stripes, drawn per image
DISTRACTOR_KINDS = ("strokes", "zigzags")
DEFAULT_STYLE = {"rotate_squares": False, "background": "gradient", "distractors": 0, "distractor_kind": "strokes"}


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
    rotate_squares: bool = False,
    background: str = "gradient",
    distractors: int = 0,
    distractor_kind: str = "strokes",
) -> dict:
    """Write the three splits as COCO datasets under `out_dir`; return counts per split and category.

    Shape sizes (side, diameter) are drawn from [min_size, min(max_size, image_size // 2)]. Each
    image has its own random stream, seeded by (seed, split, index), so an image does not change
    when the number of images in a split does.

    What is drawn (conf/data/shapes.yaml randomises it for training; conf/data/shapes-ood.yaml is a setting
    training never sees):
    - `rotate_squares` turns squares to any angle (else axis-aligned; triangles always turn, circles look the same);
    - `background`: "gradient" (a two-colour gradient with blotches), "stripes", "mixed" (either, per image) or
      "clouds" (multi-octave colour noise, a texture with detail at every scale);
    - `distractors` > 0 draws up to that many marks per image under the shapes that are not objects:
      `distractor_kind` "strokes" (straight lines and arcs) or "zigzags" (polylines of 3-7 points).
    With the defaults the random streams, images and files are what they were before these options existed.
    """
    if background not in BACKGROUNDS:
        raise ConfigError(f"data.prepare.background must be one of {', '.join(BACKGROUNDS)}, got '{background}'")
    if distractors < 0:
        raise ConfigError(f"data.prepare.distractors must be >= 0, got {distractors}")
    if distractor_kind not in DISTRACTOR_KINDS:
        raise ConfigError(
            f"data.prepare.distractor_kind must be one of {', '.join(DISTRACTOR_KINDS)}, got '{distractor_kind}'"
        )
    style = {"rotate_squares": rotate_squares, "background": background, "distractors": distractors,
             "distractor_kind": distractor_kind}
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
    if style != DEFAULT_STYLE:
        summary["generator"] = style
    for split_index, split in enumerate(SPLITS):
        json_path, image_dir = split_paths(out, split)
        if json_path.parent.exists():  # no stale images from an earlier, larger run
            shutil.rmtree(json_path.parent)
        image_dir.mkdir(parents=True)
        images, annotations = [], []
        contacts = 0
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, index])
            pixels, shapes = _render_image(rng, image_size, min_objects, max_objects, min_size, top, **style)
            contacts += _same_class_contacts(shapes, image_size)
            image_id = index + 1
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name)
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
                # only a non-default setting is written, so the default files stay byte for byte as they were
                **({"generator": style} if style != DEFAULT_STYLE else {}),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{**c, "supercategory": "shape"} for c in CATEGORIES],
        }
        write_json(json_path, coco)
        validate_coco(json_path, image_dir)  # what the generator writes, any COCO reader here must accept
        per_category = {c["name"]: sum(a["category_id"] == c["id"] for a in annotations) for c in CATEGORIES}
        summary["splits"][split] = {"images": len(images), "annotations": len(annotations), "per_category": per_category,
                                    "same_class_overlapping_or_touching_pairs": contacts}
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


def _outline(category_id: int, size: float, rng: np.random.Generator, rotate_squares: bool = False) -> np.ndarray:
    """Vertices (n, 2) of a shape around (0, 0): `size` is the square's side (axis-aligned unless
    `rotate_squares`), circle's diameter, or the (equilateral, randomly rotated) triangle's side."""
    if category_id == 1:
        angles = 2 * math.pi * np.arange(CIRCLE_VERTICES) / CIRCLE_VERTICES
        radius = size / 2
    elif category_id == 2:
        h = size / 2
        square = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        if not rotate_squares:
            return square
        a = rng.uniform(0, math.pi / 2)
        return square @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    else:
        angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(3) / 3
        radius = size / math.sqrt(3)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour stripes at a random angle and period, softened, with pixel noise: (size, size, 3) uint8."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    noise = rng.normal(0.0, rng.uniform(4, 16), (size, size, 3))
    return np.clip(c0 + t[..., None] * (c1 - c0) + noise, 0, 255).astype(np.uint8)


def _clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave colour noise (grids of 4 to 32 cells, bicubic, amplitude halving per octave), stretched to
    a random colour range, with pixel noise: detail at every scale, unlike the smooth gradients."""
    total = np.zeros((size, size, 3))
    for octave, grid in enumerate((4, 8, 16, 32)):
        coarse = rng.normal(0.0, 1.0, (grid, grid, 3)).astype(np.float32)
        layer = np.stack(
            [np.asarray(Image.fromarray(coarse[..., k]).resize((size, size), Image.BICUBIC)) for k in range(3)],
            axis=-1,
        )
        total += layer / 2**octave
    total = (total - total.min()) / (total.max() - total.min() + 1e-9)
    low, high = np.sort(rng.uniform(0, 255, (2, 3)), axis=0)
    noise = rng.normal(0.0, rng.uniform(4, 16), (size, size, 3))
    return np.clip(low + total * (high - low) + noise, 0, 255).astype(np.uint8)


def _draw_distractors(rng: np.random.Generator, pixels: np.ndarray, count: int, kind: str = "strokes") -> np.ndarray:
    """Up to `count` marks that are not objects on the background: "strokes" (straight lines and arcs, 1-3 px
    wide) or "zigzags" (open polylines of 3-7 points, 1-4 px wide)."""
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    size = pixels.shape[0]
    for _ in range(int(rng.integers(0, count + 1))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == "zigzags":
            width = int(rng.integers(1, 5))
            start, steps = rng.uniform(0, size, 2), rng.normal(0.0, size / 6, (int(rng.integers(2, 7)), 2))
            points = np.clip(start + np.cumsum(steps, axis=0), 0, size - 1)
            draw.line([tuple(float(v) for v in start)] + [tuple(float(v) for v in p) for p in points],
                      fill=colour, width=width, joint="curve")
            continue
        width = int(rng.integers(1, 4))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        if rng.uniform() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 4, max(y0, y1) + 4]
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 240)), fill=colour, width=width)
    return np.asarray(image).copy()


def _render_image(rng, size, min_objects, max_objects, min_size, max_size, rotate_squares: bool = False,
                  background: str = "gradient", distractors: int = 0,
                  distractor_kind: str = "strokes") -> tuple[np.ndarray, list[dict]]:
    """Paint shapes one by one over a background; return the pixels and their annotations (draw order).
    Distractors go under the shapes, so each shape's pixels stay exactly its mask."""
    if background == "mixed":
        background = "gradient" if rng.uniform() < 0.5 else "stripes"
    paint = {"gradient": _background, "stripes": _stripes, "clouds": _clouds}[background]
    pixels = paint(rng, size)
    if distractors:
        pixels = _draw_distractors(rng, pixels, distractors, distractor_kind)
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
        rel = _outline(category_id, rng.uniform(min_size, max_size), rng, rotate_squares)
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
        mask = polygons_mask([flat], size, size)
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


def _same_class_contacts(shapes: list[dict], size: int) -> int:
    """Pairs of shapes of one class whose full masks overlap or touch (share an edge, 4-neighbours): the cases
    that instance segmentation must split and semantic segmentation merges."""
    masks = [polygons_mask(s["segmentation"], size, size) for s in shapes]
    grown = []
    for m in masks:  # the mask and its 4-neighbours
        g = m.copy()
        g[1:] |= m[:-1]
        g[:-1] |= m[1:]
        g[:, 1:] |= m[:, :-1]
        g[:, :-1] |= m[:, 1:]
        grown.append(g)
    return sum(
        1 for i in range(len(shapes)) for j in range(i + 1, len(shapes))
        if shapes[i]["category_id"] == shapes[j]["category_id"] and (grown[i] & masks[j]).any()
    )


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
