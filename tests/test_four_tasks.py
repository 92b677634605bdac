"""The four-tasks report's own number: the image-level class (dominant shape) read from a label map. The whole
stage (three trained families, the picture, the MLflow run) runs in the end-to-end test (`make repro`)."""

import torch

from dlzoo.evaluation.four_tasks import dominant_class


def test_dominant_class_is_the_label_with_most_pixels_and_background_does_not_count():
    maps = torch.zeros(3, 6, 6, dtype=torch.int64)
    maps[0, :2] = 1          # 12 pixels of 1
    maps[0, 3:, :3] = 3      # 9 pixels of 3
    maps[1, :, :] = 2
    maps[1, 0, 0] = 1
    # image 2: background only
    assert dominant_class(maps).tolist() == [1, 2, 0]
