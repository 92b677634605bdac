"""Instance segmentation on any COCO-format folder: one binary mask per object, from its polygons or RLE.

Builds on `dlzoo.data.coco` (the same validation, layout, contiguous labels and crowd handling) and adds
what instance masks need before any training starts, each a one-line `DataError` naming the annotation id:

- every annotation has a `segmentation` (polygons or RLE): a box alone cannot train a mask head;
- each polygon has at least 3 points (`validate_coco` already rejects shorter ones by id);
- an RLE's `size` is its image's [height, width];
- a polygon stays inside its image (1 px tolerance, as for boxes): a mask outside it cannot be drawn.

Masks are the whole (amodal) outline of each object, as the annotation says, not only its visible pixels:
on the prepared shapes an occluded object's mask is still its full shape (see `dlzoo.data.shapes`).
"""

from __future__ import annotations

import numpy as np
import torch

from dlzoo.data.coco import CocoDataModule, CocoDetectionDataset, _annotation_mask, _ids
from dlzoo.errors import DataError

TOLERANCE = 1.0  # pixels a polygon may reach past its image's edge (as for boxes in validate_coco)


def validate_instance_masks(coco: dict, where: str) -> None:
    """Check every annotation of a parsed (already `validate_coco`-checked) file can give an instance mask."""
    images = {im["id"]: im for im in coco["images"]}
    anns = coco["annotations"]
    bad = [a["id"] for a in anns if not a.get("segmentation")]
    if bad:
        raise DataError(f"{where}: annotations without a segmentation (polygons or RLE), needed for instance "
                        f"masks: ids {_ids(bad)}")
    wrong_size, outside = [], []
    for a in anns:
        im, seg = images[a["image_id"]], a["segmentation"]
        h, w = im["height"], im["width"]
        if isinstance(seg, dict):
            if list(seg["size"]) != [h, w]:
                wrong_size.append(f"{a['id']} (size {list(seg['size'])}, image {h}x{w})")
            continue
        xy = np.concatenate([np.asarray(p, dtype=np.float64) for p in seg]).reshape(-1, 2)
        if (xy < -TOLERANCE).any() or (xy[:, 0] > w + TOLERANCE).any() or (xy[:, 1] > h + TOLERANCE).any():
            outside.append(a["id"])
    if wrong_size:
        raise DataError(f"{where}: annotations whose RLE size is not their image's [height, width]: ids "
                        f"{_ids(wrong_size)}")
    if outside:
        raise DataError(f"{where}: annotations with polygon points outside their image ({TOLERANCE:g} px "
                        f"tolerance): ids {_ids(outside)}")


class CocoInstanceDataset(CocoDetectionDataset):
    """(image [3, H, W] float in [0, 1], target): the detection target plus `masks` [N, H, W] uint8 (one per
    object, in the order of `boxes`) and `crowd_masks` [M, H, W] for the crowd regions (evaluation only)."""

    def __init__(self, json_path, image_dir, cache: bool = True, coco: dict | None = None, transforms=None):
        super().__init__(json_path, image_dir, cache=cache, coco=coco, transforms=transforms)
        self._masks = [self._instance_masks(im) for im in self.images] if cache else None

    def _instance_masks(self, im: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = im["height"], im["width"]
        anns = self.anns[im["id"]]

        def stack(group: list[dict]) -> torch.Tensor:
            if not group:
                return torch.zeros((0, h, w), dtype=torch.uint8)
            return torch.from_numpy(np.stack([_annotation_mask(a, h, w) for a in group]).astype(np.uint8))

        return stack([a for a in anns if not a.get("iscrowd", 0)]), stack([a for a in anns if a.get("iscrowd", 0)])

    def __getitem__(self, index: int):
        t = self.targets[index]
        target = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        masks, crowd = self._masks[index] if self._masks is not None else self._instance_masks(self.images[index])
        target["masks"], target["crowd_masks"] = masks.clone(), crowd.clone()
        return self.augment(self.image(index), target)  # the masks move with the image and boxes


class CocoInstanceDataModule(CocoDataModule):
    """`CocoDataModule` for instance segmentation: the same folders and options, `CocoInstanceDataset` splits,
    and `validate_instance_masks` on every split before any image is decoded."""

    def __init__(self, data_dir: str, task: str = "instance", **kwargs):
        if task != "instance":
            raise DataError(f"data.module.task must be 'instance' for {type(self).__name__}, got '{task}'")
        super().__init__(data_dir, task="detection", **kwargs)  # detection batches: images + target dicts
        self.task = "instance"

    dataset_class = CocoInstanceDataset

    def validate_split(self, coco: dict, where: str) -> None:
        validate_instance_masks(coco, where)
