"""What `--permute` does with the ink of an `mnist-sequences` store that no single cell holds: how
many images have ink where two cells overlap (split between them at the middle of the shared
columns, so a stroke that crosses the middle goes partly with the neighbour), how many have ink
outside every cell (the bilinear spill of a shrunk strip, carried by the nearest cell up to
`CELL_MARGIN` pixels away), and how many lose ink because it lies farther out (dropped), with
the mean number of such pixels per image that has any.

    python benchmarks/sequence_cells.py --store mnist-sequences.zarr [--split train] [--limit N]
"""

import argparse

import numpy as np

from pipelines.batches import check_permute, permute_digits
from pipelines.reader import Split, open_store


def cell_ink(images: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image of images (N, H, W, 1) with cells at boxes (N, 5, 4) = (top, left, height, width)
    (height 0 past the length): (ink pixels covered by two or more cells, ink pixels outside all)."""
    shared, outside = np.zeros(len(images), np.int64), np.zeros(len(images), np.int64)
    for i, (image, cells) in enumerate(zip(images[..., 0] > 0, boxes)):
        cover = np.zeros(image.shape, np.int64)
        for top, left, h, w in cells:
            cover[top : top + h, left : left + w] += 1
        shared[i], outside[i] = (image & (cover > 1)).sum(), (image & (cover == 0)).sum()
    return shared, outside


def dropped_ink(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per image: ink pixels that permuting the digits in their own order does not give back."""
    same, _ = permute_digits(images, np.zeros((len(images), 5), np.uint8), boxes, np.tile(np.arange(5), (len(images), 1)))
    return ((images > 0) & (same != images)).sum(axis=(1, 2, 3))


def line(name: str, pixels: np.ndarray) -> str:
    hit = pixels > 0
    mean = pixels[hit].mean() if hit.any() else 0.0
    return f"{name}: {hit.mean():.1%} of images, {mean:.1f} pixels on average where any"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="an mnist-sequences store")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args()
    info = open_store(args.store)
    try:
        check_permute(info)
    except ValueError as e:
        raise SystemExit(f"{args.store}: {e}") from None
    split = Split(info, args.split, limit=args.limit)
    images, _ = split.arrays
    boxes = split.read_array("boxes")
    shared, outside = cell_ink(images, boxes)
    dropped = np.concatenate([dropped_ink(images[i : i + 256], boxes[i : i + 256]) for i in range(0, len(images), 256)])
    print(f"{args.split}: {len(images)} images")
    print(line("ink where cells overlap", shared))
    print(line("ink outside every cell", outside))
    print(line("ink that --permute drops", dropped))


if __name__ == "__main__":
    main()
