"""Detection and semantic segmentation on any COCO-format folder: an annotation JSON + its images.

A split is an annotation file and an image folder; by default `root/{split}/annotations.json` and
`root/{split}/images` (the layout `prepare_shapes` writes), or any file and folder named by config.

- `validate_coco` checks a file before training starts and fails with one line naming the file,
  the offending ids and the key: a malformed file otherwise fails deep inside a DataLoader worker
  (or, worse, trains on boxes that point outside the image).
- Labels are contiguous: label i (1..K) is the i-th category by ascending id, 0 is background, so
  category ids with gaps (e.g. COCO's 1..90) still fit a K+1-way head.
- Semantic masks paint each image's annotations in file order, later over earlier, from their
  polygons or RLE, exactly as pycocotools rasterises them.
- Training augmentations are `torchvision.transforms.v2` transforms (`train_transforms`, e.g. flips and
  photometric distortion), applied per sample to the image wrapped as `tv_tensors.Image` and the boxes
  and masks as `tv_tensors.BoundingBoxes` / `tv_tensors.Mask`, as torchvision's detection references do:
  v2 moves the boxes and masks with the pixels, so no task hand-writes its own geometry.
- Crowd annotations (iscrowd=1) are treated as pycocotools' COCOeval treats them: not objects to
  learn or to recall, but regions where detections are neither right nor wrong. A detection
  target's `boxes`/`labels` (what the nets train on) leave them out, as torchvision's references
  do; `crowd_boxes`/`crowd_labels` carry them to evaluation, and `dlzoo.models.detection.metric_target` hands both to
  torchmetrics' COCO mAP with the `iscrowd` flag.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert

from dlzoo.data.common import SplitDataModule, require_prepared
from dlzoo.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
TASKS = ("detection", "segmentation")


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split in the default layout under `root`."""
    return Path(root) / split / "annotations.json", Path(root) / split / "images"


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

    Raises DataError naming the file, the problem and the offending ids.
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
    bad = [a["id"] for a in anns if a.get("iscrowd", 0) not in (0, 1)]  # 0/1 (and False/True) only
    if bad:
        raise DataError(f"{where}: annotations whose iscrowd is not 0 or 1: ids {_ids(bad)}")
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


def polygons_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels pycocotools rasterises from the polygons' union."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def _annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    seg = ann.get("segmentation")
    if not seg:
        raise DataError(f"annotation {ann.get('id')} has no segmentation: a segmentation mask needs polygons or RLE")
    if isinstance(seg, list):
        return polygons_mask(seg, height, width)
    rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg  # uncompressed RLE
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
    later over earlier.
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

    `cache` keeps decoded uint8 images (and targets) in memory: small datasets load once; turn it
    off for large ones.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, cache: bool = True, coco: dict | None = None,
                 transforms=None):
        self.json_path, self.image_dir = Path(json_path), Path(image_dir)
        self.transforms = transforms  # a v2 transform of (image, target), or None
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

    def augment(self, image: torch.Tensor, target):
        """(image, target) through `self.transforms`, with the image, boxes and masks wrapped as tv_tensors so
        that v2 knows what each is, and unwrapped to plain tensors after. A target is a dict (its `boxes`,
        `crowd_boxes`, `masks` and `crowd_masks` move with the image; other keys pass through) or a mask."""
        if self.transforms is None:
            return image, target
        size = tuple(image.shape[-2:])
        if isinstance(target, dict):
            wrapped = dict(target)
            for key in ("boxes", "crowd_boxes"):
                if key in wrapped:
                    wrapped[key] = tv_tensors.BoundingBoxes(wrapped[key], format="XYXY", canvas_size=size)
            for key in ("masks", "crowd_masks"):
                if key in wrapped:
                    wrapped[key] = tv_tensors.Mask(wrapped[key])
        else:
            wrapped = tv_tensors.Mask(target)
        image, wrapped = self.transforms(tv_tensors.Image(image), wrapped)
        plain = (lambda v: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v)
        out = {k: plain(v) for k, v in wrapped.items()} if isinstance(wrapped, dict) else plain(wrapped)
        return plain(image).contiguous(), out


class CocoDetectionDataset(_CocoImages):
    """(image [3, H, W] float in [0, 1], target) with target = {"boxes": [N, 4] xyxy float,
    "labels": [N] int64, "image_id": int, "crowd_boxes": [M, 4], "crowd_labels": [M]}.

    `boxes`/`labels` are the objects (iscrowd=0), the only ones a net trains on; the crowd regions
    are kept apart for evaluation (see `dlzoo.models.detection.metric_target`).
    """

    def __init__(self, json_path, image_dir, cache: bool = True, coco: dict | None = None, transforms=None):
        super().__init__(json_path, image_dir, cache=cache, coco=coco, transforms=transforms)
        self.targets = [self._target(im) for im in self.images]

    def _boxes_and_labels(self, anns: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        return box_convert(xywh, in_fmt="xywh", out_fmt="xyxy"), labels

    def _target(self, im: dict) -> dict:
        anns = self.anns[im["id"]]
        boxes, labels = self._boxes_and_labels([a for a in anns if not a.get("iscrowd", 0)])
        crowd_boxes, crowd_labels = self._boxes_and_labels([a for a in anns if a.get("iscrowd", 0)])
        return {"boxes": boxes, "labels": labels, "image_id": int(im["id"]),
                "crowd_boxes": crowd_boxes, "crowd_labels": crowd_labels}

    def __getitem__(self, index: int):
        t = self.targets[index]  # cloned: a training step may change its batch's targets in place
        return self.augment(self.image(index), {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in t.items()})


class CocoSegmentationDataset(_CocoImages):
    """(image [3, H, W] float in [0, 1], mask [H, W] int64: 0 = background, else the label).

    Crowd regions are painted like any other annotation: their pixels do belong to the category.
    """

    def __init__(self, json_path, image_dir, cache: bool = True, coco: dict | None = None, transforms=None):
        super().__init__(json_path, image_dir, cache=cache, coco=coco, transforms=transforms)
        dtype = np.uint8 if len(self.category_ids) < 255 else np.int64
        self._masks = [self._mask(i).astype(dtype) for i in range(len(self))] if cache else None

    def _mask(self, index: int) -> np.ndarray:
        im = self.images[index]
        return _paint(self.anns[im["id"]], im["height"], im["width"], self.label_of.__getitem__)

    def __getitem__(self, index: int):
        mask = self._masks[index] if self._masks is not None else self._mask(index)
        return self.augment(self.image(index), torch.from_numpy(mask.astype(np.int64)))


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


class CocoDataModule(SplitDataModule):
    """Detection or segmentation batches from COCO folders: `data_dir/{split}/annotations.json` +
    `data_dir/{split}/images` by default (e.g. the prepared shapes); set `<split>_json` and
    `<split>_images` to use another COCO dataset for that split instead.

    `setup` validates every split it needs (fit: train + val; validate: val; test/predict: test)
    before decoding any image. `num_classes` = categories + 1 (background); `category_names[label]`.
    `train_transforms` (a v2 transform, e.g. `v2.Compose` from config) augments the training split only.

    A task is a dataset class and a check: subclasses for other tasks (`coco_instance.CocoInstanceDataModule`)
    override `dataset_class` and `validate_split`.
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
        train_transforms=None,
    ):
        super().__init__(batch_size, num_workers)
        self.train_transforms = train_transforms
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
        """(annotation file, image folder) of a split; for the default layout, checks it exists."""
        if split in self.custom:
            return self.custom[split]
        return split_paths(require_prepared(self.data_dir, f"{split}/annotations.json", f"{split}/images"), split)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, SPLITS)
        todo = [s for s in wanted if s not in self.datasets]
        parsed = {}
        for split in todo:  # every split is checked before any image is decoded
            json_path, image_dir = self.paths(split)
            parsed[split] = validate_coco(json_path, image_dir)
            self.validate_split(parsed[split], str(json_path))
        for split in todo:
            self._check_categories(split, parsed[split])
            if self.task == "segmentation" and self.batch_size > 1:
                sizes = {(im["width"], im["height"]) for im in parsed[split]["images"]}
                if len(sizes) > 1:
                    raise DataError(
                        f"{self.paths(split)[0]}: images differ in size ({_ids(sorted(sizes))}); segmentation batches "
                        f"need one size: resize the images or set data.module.batch_size=1"
                    )
        for split in todo:
            json_path, image_dir = self.paths(split)
            transforms = self.train_transforms if split == "train" else None
            self.datasets[split] = self.dataset_class(json_path, image_dir, cache=self.cache, coco=parsed[split],
                                                      transforms=transforms)

    @property
    def dataset_class(self) -> type:
        return CocoDetectionDataset if self.task == "detection" else CocoSegmentationDataset

    def validate_split(self, coco: dict, where: str) -> None:
        """What this task needs of a split beyond `validate_coco` (nothing for boxes and semantic masks)."""

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
