"""benchmarks/pairs_order.py: the reading order of mnist-pairs as the ink shows it."""

import importlib.util
from pathlib import Path

import numpy as np

from stores import tiny_store
from visatt_models.data import Split, open_store

_spec = importlib.util.spec_from_file_location("pairs_order", Path(__file__).resolve().parents[2] / "benchmarks" / "pairs_order.py")
pairs_order = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pairs_order)


def test_ink_centres_and_the_order_they_give():
    images = np.zeros((3, 90, 90, 1), np.uint8)
    boxes = np.array([[[0, 10], [40, 11]], [[0, 10], [40, 10]], [[40, 10], [0, 10]]])  # (top, left) per cell
    for i, cells in enumerate(boxes):
        for top, left in cells:
            images[i, top + 14, left + 13 : left + 16] = 100  # ink centred on the cell's centre
    images[0, 40 + 14, 11 + 13] = 0  # the second cell's ink now centres half a pixel to the right
    centres = pairs_order.ink_centres(images, boxes)
    np.testing.assert_allclose(centres[1], [[14, 24], [54, 24]])
    np.testing.assert_allclose(centres[0, 1], [54, 25.5])
    # 1.5 px to the right: first stays first; a tie goes to the top cell, which is the first in
    # sample 1 and the second in sample 2.
    assert pairs_order.order_from_ink(centres).tolist() == [False, False, True]
    lines = pairs_order.table(np.array([False, True, False]), np.array([1, 0, 7]))
    assert lines[0] == "all: n=3 order misread from the ink=0.3333"
    assert lines[1] == "left edges 0 px apart: n=1 (33.33% of all) misread=1.0000"


def test_the_ink_shows_the_order_of_real_pairs_a_few_pixels_apart(tmp_path):
    split = Split(open_store(tiny_store(tmp_path / "pairs.zarr", name="mnist-pairs", limit=400, canvas=84)), "train")
    boxes = split.read_array("boxes")
    wrong = pairs_order.order_from_ink(pairs_order.ink_centres(split.arrays[0], boxes))
    gaps = np.abs(boxes[:, 1, 1] - boxes[:, 0, 1])
    assert (gaps >= 2).sum() > 350 and not wrong[gaps >= 2].any()
