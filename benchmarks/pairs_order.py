"""How well the image shows the reading order of an `mnist-pairs` store: order the two digits by
where their ink says their cells are, and count how often that disagrees with the labels, by how
far apart the cells' left edges are. A simple rule, so an upper estimate of the order errors that
the image leaves unavoidable (given which ink belongs to which digit, taken from the boxes).

    python benchmarks/pairs_order.py --store mnist-pairs.zarr [--split test]

The labels follow the 28x28 cells (left edge, then top edge), which the image does not show; MNIST
centres each digit's centre of mass in its cell, so the ink puts the cell's left edge at the
mass's column minus 14, give or take half a pixel. Reading the cells that way and calling edges
within half a pixel a tie (broken by the top, as the labels are) is what this script counts.
The cells of an `mnist-pairs` image do not overlap and the canvas has no clutter, so each cell
holds exactly its own digit's ink.
"""

import argparse

import numpy as np

from pipelines.batches import check_reposition
from pipelines.reader import Split, open_store
from pipelines.sequences import DIGIT

GAP_BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 5), (6, None))


def ink_centres(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 2, 2) centre of mass (row, column) in canvas pixels of the ink in each of the two
    cells at `boxes` (N, >=2, >=2) = (top, left) of images (N, H, W, 1)."""
    out = np.empty((len(images), 2, 2))
    ramp = np.arange(DIGIT, dtype=np.float64)
    for i, (image, cells) in enumerate(zip(images[..., 0].astype(np.float64), boxes[:, :2, :2])):
        for j, (top, left) in enumerate(cells):
            cell = image[top : top + DIGIT, left : left + DIGIT]
            mass = cell.sum()
            out[i, j] = (top + cell.sum(axis=1) @ ramp / mass, left + cell.sum(axis=0) @ ramp / mass)
    return out


def order_from_ink(centres: np.ndarray) -> np.ndarray:
    """(N,) True where the ink says the second cell comes first: its estimated left edge more
    than half a pixel before the first's, or within half a pixel and its top above."""
    dx = centres[:, 1, 1] - centres[:, 0, 1]
    return (dx < -0.5) | ((np.abs(dx) <= 0.5) & (centres[:, 1, 0] < centres[:, 0, 0]))


def table(wrong: np.ndarray, gaps: np.ndarray) -> list[str]:
    """Lines: the share of pairs whose order the ink misreads, overall and per gap bucket."""
    lines = [f"all: n={len(wrong)} order misread from the ink={wrong.mean():.4f}"]
    for lo, hi in GAP_BUCKETS:
        s = (gaps >= lo) & (gaps <= (np.inf if hi is None else hi))
        if s.any():
            label = f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi is not None else f">= {lo}")
            lines.append(f"left edges {label} px apart: n={s.sum()} ({s.mean():.2%} of all) misread={wrong[s].mean():.4f}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="an mnist-pairs store")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    info = open_store(args.store)
    try:
        check_reposition(info)  # the stores whose cells hold exactly their own digit's ink
    except ValueError as e:
        raise SystemExit(f"{args.store}: {e}") from None
    split = Split(info, args.split)
    images, _ = split.arrays
    boxes = split.read_array("boxes")
    wrong = order_from_ink(ink_centres(images, boxes))  # labels and boxes are in reading order: a swap is wrong
    print("\n".join(table(wrong, np.abs(boxes[:, 1, 1] - boxes[:, 0, 1]))))


if __name__ == "__main__":
    main()
