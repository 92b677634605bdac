"""YOLOv3's own parts: k-means anchors (1 - IoU distance, reproducible), the target assignment of a hand-made
box, and anchors fitted from the training boxes when training starts and kept in the checkpoint."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from dlzoo.errors import DataError
from dlzoo.models.yolov3 import YOLOv3, kmeans_anchors, shape_iou

ANCHORS = [[10, 10], [14, 14], [20, 20], [26, 26], [32, 32], [40, 40], [48, 48], [56, 56], [64, 64]]


def _three_shapes(n=60, seed=1):
    """Box shapes around 12x12, 24x36 and 50x40 px (a few px of noise)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[12, 12], [24, 36], [50, 40]], dtype=float)
    return np.concatenate([c + rng.normal(0, 1.0, (n, 2)) for c in centres])


def test_shape_iou_aligns_boxes_at_a_corner():
    iou = shape_iou(torch.tensor([[10.0, 10.0], [10.0, 20.0]]), torch.tensor([[10.0, 10.0], [20.0, 10.0]]))
    assert iou.flatten().tolist() == pytest.approx([1.0, 0.5, 0.5, 100 / 300])


def test_kmeans_anchors_are_reproducible_sorted_and_find_the_clusters():
    wh = _three_shapes()
    a = kmeans_anchors(wh, k=3, seed=0)
    assert np.array_equal(a, kmeans_anchors(wh, k=3, seed=0))  # same boxes, same seed: the same anchors
    assert (np.diff(a.prod(1)) > 0).all()  # smallest first
    assert np.allclose(a, [[12, 12], [24, 36], [50, 40]], atol=1.0)
    nine = kmeans_anchors(wh, k=9, seed=0)
    assert nine.shape == (9, 2) and np.array_equal(nine, kmeans_anchors(wh, k=9, seed=0))
    with pytest.raises(DataError, match="at least 9 training boxes, got 4"):
        kmeans_anchors(wh[:4], k=9)


def test_assignment_of_a_hand_made_box():
    """A 20x20 box centred at (40, 50) on a 128 px image: anchor 2 (20x20, the third smallest) fits it exactly,
    so scale 0 (stride 8, a 16x16 grid), anchor 2 of that scale, cell (row 6, col 5), centre offsets (0, 0.25),
    log size ratios 0. A 44x44 box fits the 48x48 anchor best (IoU 0.84 against 0.83 for 40x40): scale 2."""
    net = YOLOv3(size=128)
    net.set_anchors(ANCHORS[::-1])  # any order in: sorted by area
    assert net.anchors.tolist() == ANCHORS
    grids = [(16, 16), (8, 8), (4, 4)]
    small, large = net.assign(torch.tensor([[30.0, 40.0, 50.0, 60.0], [0.0, 0.0, 44.0, 44.0]]), grids, (128, 128)).tolist()
    assert small == pytest.approx((0, 0, 2, 6, 5, 0.0, 0.25, 0.0, 0.0))  # object, scale, anchor, row, col, tx, ty, tw, th
    assert large[:5] == [1, 2, 0, 0, 0] and large[5:7] == pytest.approx((22 / 32, 22 / 32))
    assert large[7:] == pytest.approx((np.log(44 / 48), np.log(44 / 48)))


def test_multi_anchor_assignment_adds_every_anchor_above_the_threshold():
    """With anchor_iou_thresh 0.8 the 44x44 box also goes to the 40x40 anchor (shape IoU 0.83), scale 1 (rows are
    ordered by object, then anchor); the 20x20 box has no second anchor that close. null is the paper's one anchor."""
    net = YOLOv3(size=128, anchor_iou_thresh=0.8)
    net.set_anchors(ANCHORS)
    grids = [(16, 16), (8, 8), (4, 4)]
    out = net.assign(torch.tensor([[30.0, 40.0, 50.0, 60.0], [0.0, 0.0, 44.0, 44.0]]), grids, (128, 128)).tolist()
    assert [o[:3] for o in out] == [[0, 0, 2], [1, 1, 2], [1, 2, 0]]
    assert out[1][3:5] == [1, 1] and out[1][7:] == pytest.approx((np.log(44 / 40), np.log(44 / 40)))


def test_losses_pull_the_assigned_prediction_towards_its_object():
    torch.manual_seed(0)
    net = YOLOv3(size=64)
    net.set_anchors(np.array(ANCHORS) / 2)
    target = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 32.0]]), "labels": torch.tensor([2])}]
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    image = torch.rand(1, 3, 64, 64)
    first = None
    for _ in range(30):
        losses = net.train()(image, target)
        loss = sum(losses.values())
        first = first if first is not None else {k: float(v) for k, v in losses.items()}
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert set(first) == {"objectness", "xy", "wh", "classification"}
    assert all(float(losses[k]) < first[k] for k in first)
    with torch.no_grad():
        (det,) = net.eval()(image)
    # the top detection is the object, with its class, a hit at COCO's IoU 0.5
    assert det["labels"][0] == 2 and float(box_iou(det["boxes"][:1], target[0]["boxes"])) > 0.5
