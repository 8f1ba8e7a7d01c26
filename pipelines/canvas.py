"""Per-sample random generators and vectorised pasting of digits and clutter onto canvases.

Every sample draws only from its own generator, seeded from (seed, split, index), so a sample's
bytes do not depend on which worker made it, how the work was chunked, or the scheduler.
"""

from __future__ import annotations

import numpy as np
from numpy.random.bit_generator import ISeedSequence

DIGIT = 28  # MNIST digits are 28x28
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "extra": 3}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample `index` of `split`: `SeedSequence(seed, spawn_key=(split, index))`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], index)))


# Melissa O'Neill's seed_seq_fe hash, as numpy's SeedSequence implements it (pool of 4 words).
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _XSHIFT, _POOL = 0xCA01F9DD, 0x4973F715, np.uint32(16), 4


def _words(value: int) -> list[int]:
    """A non-negative int as little-endian uint32 words (at least one), as SeedSequence reads it."""
    if value < 0:
        raise ValueError(f"seed words must be non-negative, got {value}")
    words = []
    while True:
        words.append(value & 0xFFFFFFFF)
        value >>= 32
        if not value:
            return words


def _seed_states(entropy: np.ndarray) -> np.ndarray:
    """`SeedSequence.generate_state(4, uint64)` of each row of assembled entropy (B, E) uint32,
    for all rows at once: numpy's hash, vectorised over the rows (wrapping uint32 arithmetic)."""
    b, n = entropy.shape
    with np.errstate(over="ignore"):
        const = _INIT_A

        def hashmix(value):
            nonlocal const
            value = value ^ np.uint32(const)
            const = (const * _MULT_A) & 0xFFFFFFFF
            value = value * np.uint32(const)
            return value ^ (value >> _XSHIFT)

        def mix(x, y):
            r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
            return r ^ (r >> _XSHIFT)

        pool = [hashmix(entropy[:, i] if i < n else np.zeros(b, np.uint32)) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL, n):
            for dst in range(_POOL):
                pool[dst] = mix(pool[dst], hashmix(entropy[:, src]))
        const, out = _INIT_B, []
        for i in range(8):  # 4 uint64 = 8 uint32 words, drawn cyclically from the pool
            value = pool[i % _POOL] ^ np.uint32(const)
            const = (const * _MULT_B) & 0xFFFFFFFF
            value = value * np.uint32(const)
            out.append(value ^ (value >> _XSHIFT))
    return np.ascontiguousarray(np.stack(out, axis=1)).view("<u8")  # (B, 4)


class _SeedState(ISeedSequence):
    """A seed sequence whose state was computed ahead (`_seed_states`)."""

    __slots__ = ("state",)

    def __init__(self, state: np.ndarray):
        self.state = state

    def generate_state(self, n_words, dtype=np.uint32):
        if n_words != 4 or np.dtype(dtype) != np.uint64:  # PCG64 asks for exactly this
            raise ValueError("a precomputed seed state gives 4 uint64 words only")
        return self.state


def sample_rngs(seed: int, split: str, start: int, stop: int) -> list[np.random.Generator]:
    """`[sample_rng(seed, split, i) for i in range(start, stop)]`, the same generators (the same
    streams, tested), made about 7x faster: the seed hash runs once over all the samples."""
    run = _words(seed)
    run += [0] * (_POOL - len(run))  # SeedSequence pads the run entropy when a spawn key follows
    indices = np.arange(start, stop, dtype=np.int64)
    if stop > 2**32:
        return [sample_rng(seed, split, int(i)) for i in indices]
    entropy = np.empty((stop - start, len(run) + 2), np.uint32)  # run words, split code, index
    entropy[:, : len(run)] = run
    entropy[:, len(run)] = SPLIT_CODES[split]
    entropy[:, len(run) + 1] = indices
    return [np.random.Generator(np.random.PCG64(_SeedState(state))) for state in _seed_states(entropy)]


def named_rng(seed: int, purpose: int) -> np.random.Generator:
    """A generator for a whole-dataset draw (e.g. the train/val permutation); `purpose` >= 1000."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose,)))


def paste(canvas: np.ndarray, patches: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
    """Add `patches` (B, h, w) into `canvas` (B, H, W) at per-sample offsets (top, left) (B,).

    Through a writeable window view of the canvases, (B, H-h+1, W-w+1, h, w): one indexed add
    picks each sample's window, so numpy copies whole h x w blocks (measured 2.7x faster than a
    Python loop of slice adds for 28x28 digits, 7x for 9x9 clutter, and 8x faster than indexing
    every pixel). Each window is in its own canvas: no pixel is written twice in one call. The
    caller keeps `canvas` wide enough (uint16) and clips at 255.
    """
    h, w = patches.shape[1:]
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (h, w), axis=(1, 2), writeable=True)
    windows[np.arange(len(patches)), top, left] += patches


def crop(images: np.ndarray, which: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """`size` x `size` patches (B, size, size) of `images[which]` (images (N, h, w)) at per-sample
    offsets, gathered straight from a window view (no copy of the whole images)."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
    return windows[which, top, left]


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
        patches = crop(pool_images, others[:, j], crop_at[:, j, 0], crop_at[:, j, 1], size)
        paste(canvas, patches, place_at[:, j, 0], place_at[:, j, 1])


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """Canvases (B, C, C) uint16 clipped at 255, as uint8 images (B, C, C, 1)."""
    np.minimum(canvas, 255, out=canvas)
    return canvas.astype(np.uint8)[..., None]
