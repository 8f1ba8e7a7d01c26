"""Per-sample random generators and vectorised pasting of digits and clutter onto canvases.

Every sample draws only from its own generator, seeded from (seed, split, index), so a sample's
bytes do not depend on which worker made it, how the work was chunked, or the scheduler.
"""

from __future__ import annotations

import numpy as np

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
