"""Per-sample random generators and vectorised pasting of digits and clutter onto canvases.

Every sample draws only from its own generator, seeded from (seed, split, index), so a sample's
bytes do not depend on which worker made it, how the work was chunked, or the scheduler.
"""

from __future__ import annotations

import numpy as np

DIGIT = 28  # MNIST digits are 28x28
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "extra": 3}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample `index` of `split`: `SeedSequence(seed, spawn_key=(split, index))`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], index)))


def named_rng(seed: int, purpose: int) -> np.random.Generator:
    """A generator for a whole-dataset draw (e.g. the train/val permutation); `purpose` >= 1000."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose,)))


def paste(canvas: np.ndarray, patches: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
    """Add `patches` (B, h, w) into `canvas` (B, H, W) at per-sample offsets (top, left) (B,).

    One fancy-indexed add for the whole batch; each patch lands in its own canvas, so no index
    repeats within the call. The caller keeps `canvas` wide enough (uint16) and clips at 255.
    """
    b, h, w = patches.shape
    rows = top[:, None, None] + np.arange(h)[None, :, None]  # (B, h, 1)
    cols = left[:, None, None] + np.arange(w)[None, None, :]  # (B, 1, w)
    canvas[np.arange(b)[:, None, None], rows, cols] += patches


def crop(images: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Crop (B, size, size) patches from `images` (B, h, w) at per-sample offsets."""
    rows = top[:, None, None] + np.arange(size)[None, :, None]
    cols = left[:, None, None] + np.arange(size)[None, None, :]
    return images[np.arange(len(images))[:, None, None], rows, cols]


def other_digits(rng: np.random.Generator, n_pool: int, index: int, count: int) -> np.ndarray:
    """`count` uniform pool indices other than `index` (with replacement)."""
    if count and n_pool < 2:
        raise ValueError(f"the split has {n_pool} digit(s): a sample needs another digit")
    other = rng.integers(0, n_pool - 1, size=count)
    return other + (other >= index)


def add_clutter(canvas: np.ndarray, rng_rows: list, pool_images: np.ndarray, index0: int, count: int, size: int) -> None:
    """Add `count` random `size` x `size` crops of other digits of the split to each canvas (B, C, C).

    Row r is sample `index0 + r`; its draws continue its own generator `rng_rows[r]`: the
    clutter sources, then the crop offsets inside the 28x28 digits, then the canvas positions.
    """
    if not count:
        return
    b, c = len(canvas), canvas.shape[1]
    others = np.empty((b, count), np.int64)  # (B, K)
    crop_at = np.empty((b, count, 2), np.int64)  # (B, K, 2)
    place_at = np.empty((b, count, 2), np.int64)  # (B, K, 2)
    for row, rng in enumerate(rng_rows):
        others[row] = other_digits(rng, len(pool_images), index0 + row, count)
        crop_at[row] = rng.integers(0, DIGIT - size + 1, size=(count, 2))
        place_at[row] = rng.integers(0, c - size + 1, size=(count, 2))
    for j in range(count):
        patches = crop(pool_images[others[:, j]], crop_at[:, j, 0], crop_at[:, j, 1], size)
        paste(canvas, patches, place_at[:, j, 0], place_at[:, j, 1])
