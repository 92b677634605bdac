"""Out-of-distribution scores beside the in-distribution ones, for the COCO evaluators (detection, semantic and
instance segmentation): the same metrics on the test split of another COCO folder that training never saw
(the shapes drawn by a second generator setting, conf/data/shapes-ood.yaml, or a user's own folder).

Keys: `ood/<metric>` for every `test/<metric>`, `ood/<metric>_kept` = OOD / in-distribution for the headline
metrics the evaluator names, and `ood/passed` = 1 when every kept share reaches `min_kept` (the bar is the
evaluator config's). Plots are written with an `ood_` prefix beside the in-distribution ones.

`max_images` (the evaluators' `max_images: ${eval_limit}`) scores only the first images of each split: the
smoke profile's cap, so that the end-to-end test checks every evaluator without scoring 600 images each.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from torch.utils.data import Subset


def ood_datamodule(datamodule, ood_dir: str | Path):
    """The same kind of COCO DataModule, task and batch size, reading `ood_dir/test/`."""
    return type(datamodule)(str(ood_dir), task=datamodule.task, batch_size=datamodule.batch_size)


def first_test_images(datamodule, max_images: int | None):
    """The DataModule with its test split cut to the first `max_images` images (None: all of them); a cut is a
    shallow copy, so the caller's DataModule keeps its whole split."""
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    if max_images is None or len(test) <= max_images:
        return datamodule
    cut = copy.copy(datamodule)
    cut.datasets = {**datamodule.datasets, "test": Subset(test, range(max_images))}
    return cut


def with_ood(score: Callable, module, datamodule, out_dir: str | Path, ood_dir: str | Path | None,
             kept: tuple[str, ...], min_kept: float, max_images: int | None = None) -> tuple[dict, list[Path]]:
    """`score(module, datamodule, out_dir, split_title) -> (metrics, files)` on the data's own test split, then
    (with `ood_dir`) on the OOD test split, merged as described above. `split_title` names the split in plots."""
    metrics, files = score(module, first_test_images(datamodule, max_images), Path(out_dir), "test")
    if ood_dir is None:
        return metrics, files
    ood_data = first_test_images(ood_datamodule(datamodule, ood_dir), max_images)
    ood, ood_files = score(module, ood_data, Path(out_dir) / "ood", "out-of-distribution test")
    for key, value in ood.items():
        metrics["ood/" + key.removeprefix("test/")] = value
    shares = []
    for key in kept:
        share = ood[key] / metrics[key] if metrics[key] > 0 else 0.0
        metrics[f"ood/{key.removeprefix('test/')}_kept"] = share
        shares.append(share)
    metrics["ood/passed"] = float(all(s >= min_kept for s in shares))
    for f in ood_files:  # one folder: MLflow logs artifacts by file name
        files.append(f.replace(Path(out_dir) / f"ood_{f.name}"))
    folder = Path(out_dir) / "ood"
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return metrics, files
