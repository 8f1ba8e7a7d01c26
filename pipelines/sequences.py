"""Multi-digit datasets built from real MNIST, in SVHN's label layout.

- `mnist-sequences`: 1 to 5 digits of one split laid left to right like a house number. Each digit
  is a 28x28 cell; consecutive cells are `min_gap..max_gap` pixels apart (negative: the cells
  overlap, MNIST's empty margins keep the strokes apart) and each cell drops 0..`jitter` pixels.
  The strip is shrunk (never enlarged) with PIL's bilinear filter until it fits the canvas, then
  placed at a uniformly random position fully inside it. Optional clutter as in `mnist-cluttered`.
- `mnist-pairs` (Ba et al. 2015, "MNIST pairs"): two digits at uniformly random positions of a
  100x100 canvas, fully inside and (by default) not overlapping; labels in reading order, i.e.
  left to right by the digit's left edge (top edge breaks ties).

Both write `labels` (N, 5) uint8 padded with BLANK (10), `lengths` (N,) and `boxes` (N, 5, 4) int32
(top, left, height, width of each digit's cell in canvas pixels, padded with 0), so models and
tools treat them like SVHN. Splits, sizes and the train/val carve are those of the MNIST canvas
datasets: sample i of a split has that split's source digit i as one of its digits (its position
in the number is random), so every source digit appears; the other digits are drawn uniformly from
the other digits of the same split. Overlaps add and clip at 255.

Every sample draws only from its own generator seeded from (seed, split, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from pipelines.canvas import SampleStreams, add_clutter, other_digits, paste
from pipelines.mnist import DIGIT, split_pools
from pipelines.sources import MnistSource, load_mnist

MAX_LENGTH = 5
BLANK = 10
RESAMPLE = Image.Resampling.BILINEAR  # shrinking a strip (PIL's antialiased triangle filter)


@dataclasses.dataclass(frozen=True)
class SequenceRecipe:
    """Everything that decides the bytes of an `mnist-sequences` store."""

    canvas: int = 64
    min_length: int = 1
    max_length: int = 5
    min_gap: int = -4  # pixels between consecutive 28x28 cells, before fitting
    max_gap: int = 4
    jitter: int = 6  # each cell drops 0..jitter pixels
    clutter_count: int = 0
    clutter_size: int = 8
    val_size: int = 6000
    seed: int = 0
    source: str = "mnist"
    generator: int = 1  # bumped whenever the sampling code changes the bytes

    def __post_init__(self):
        if not 1 <= self.min_length <= self.max_length <= MAX_LENGTH:
            raise ValueError(f"lengths must satisfy 1 <= min {self.min_length} <= max {self.max_length} <= {MAX_LENGTH}")
        if self.min_gap > self.max_gap or self.min_gap <= -DIGIT:
            raise ValueError(f"gaps must satisfy -{DIGIT} < min {self.min_gap} <= max {self.max_gap}")
        if self.canvas < 8 or self.jitter < 0 or not 1 <= self.clutter_size <= min(DIGIT, self.canvas):
            raise ValueError("canvas >= 8, jitter >= 0 and 1 <= clutter size <= min(28, canvas) required")
        if self.clutter_count < 0 or self.val_size < 0 or self.seed < 0:
            raise ValueError("clutter count, val size and seed must be non-negative")


@dataclasses.dataclass(frozen=True)
class PairsRecipe:
    """Everything that decides the bytes of an `mnist-pairs` store."""

    canvas: int = 100
    overlap: bool = False  # allow the two 28x28 digits to overlap
    clutter_count: int = 0
    clutter_size: int = 8
    val_size: int = 6000
    seed: int = 0
    source: str = "mnist"
    generator: int = 1

    def __post_init__(self):
        if self.canvas < DIGIT:
            raise ValueError(f"canvas {self.canvas} cannot hold a {DIGIT}x{DIGIT} digit")
        # Without overlap, the second digit must find room beside the first wherever that fell:
        # from the middle position p = (canvas - 28) // 2 the farthest one is ceil((canvas - 28) / 2)
        # away, which must be >= 28 (a smaller canvas made the rejection loop spin forever).
        if not self.overlap and -(-(self.canvas - DIGIT) // 2) < DIGIT:
            raise ValueError(f"canvas {self.canvas} cannot always place two non-overlapping {DIGIT}x{DIGIT} digits "
                             f"(needs >= {3 * DIGIT - 1}, or allow overlap)")
        if self.clutter_count < 0 or self.val_size < 0 or self.seed < 0 or not 1 <= self.clutter_size <= DIGIT:
            raise ValueError("clutter count, val size and seed must be non-negative, clutter size in 1..28")


def _empty(b: int) -> dict[str, np.ndarray]:
    return {
        "labels": np.full((b, MAX_LENGTH), BLANK, np.uint8),  # (B, 5)
        "lengths": np.zeros(b, np.uint8),  # (B,)
        "boxes": np.zeros((b, MAX_LENGTH, 4), np.int32),  # (B, 5, 4)
    }


def generate_sequences(
    recipe: SequenceRecipe, pool_images: np.ndarray, pool_labels: np.ndarray, split: str, start: int, stop: int
) -> dict[str, np.ndarray]:
    """Samples [start, stop) of `split` from its source digits `pool_images` (P, 28, 28) uint8:
    images (B, C, C, 1) uint8, labels (B, 5), lengths (B,), boxes (B, 5, 4).

    Each sample: L digits (the sample's own source digit at a random place among L - 1 others)
    in 28x28 cells side by side with random gaps and vertical drops (a strip), the strip shrunk
    to fit the canvas if it is larger (PIL, per sample), at a random place, then clutter. All
    but the shrinking runs for the whole chunk at once."""
    b, c, n_pool, m = stop - start, recipe.canvas, len(pool_labels), MAX_LENGTH
    out = _empty(b)
    # Each sample's draws, in its generator's order: length, the other digits, where the source
    # digit goes among them, the gaps, the vertical drops, where the strip goes, then clutter.
    streams = SampleStreams(recipe.seed, split, start, stop)
    lengths = streams.integers(recipe.min_length, recipe.max_length + 1)  # (B,)
    others = _widen(other_digits(streams, n_pool, start, lengths - 1), m)  # (B, 5), valid below L - 1
    places = streams.integers(0, lengths)  # (B,)
    gaps = _widen(streams.integers_ragged(recipe.min_gap, recipe.max_gap + 1, lengths - 1), m)  # (B, 5), valid below L - 1
    drops = _widen(streams.integers_ragged(0, recipe.jitter + 1, lengths), m)  # (B, 5), valid below L

    cells = np.arange(m)  # (5,)
    present = cells < lengths[:, None]  # (B, 5)
    from_others = np.take_along_axis(others, np.maximum(cells - (cells > places[:, None]), 0), axis=1)
    digits = np.where(cells == places[:, None], (start + np.arange(b))[:, None], from_others)  # (B, 5)
    digits = np.where(present, digits, 0)  # past the length: any valid index, pasted as zeros
    steps = np.where(cells[:-1] < (lengths - 1)[:, None], DIGIT + gaps[:, :-1], 0)  # (B, 4)
    lefts = np.concatenate([np.zeros((b, 1), np.int64), np.cumsum(steps, axis=1)], axis=1)  # (B, 5) cell lefts
    h, widths = DIGIT + recipe.jitter, lefts[np.arange(b), lengths - 1] + DIGIT  # strip height, (B,) widths
    strips = np.zeros((b, h, int(widths.max())), np.uint8)  # (B, H, Wmax); overlapping cells saturate at 255
    for j in range(m):
        cell = np.where(present[:, j, None, None], pool_images[digits[:, j]], np.uint8(0))  # (B, 28, 28)
        paste(strips, cell, drops[:, j], lefts[:, j])

    fit = np.minimum(1.0, np.minimum(c / h, c / widths))  # (B,) shrink factor (as Python's min of floats)
    fh = np.minimum(c, np.maximum(1, np.rint(h * fit).astype(np.int64)))  # (B,) round half to even, as round()
    fw = np.minimum(c, np.maximum(1, np.rint(widths * fit).astype(np.int64)))  # (B,)
    tops = streams.integers(0, c - fh + 1)  # (B,)
    lefts_on_canvas = streams.integers(0, c - fw + 1)  # (B,)
    canvas = np.zeros((b, c, c), np.uint8)  # (B, C, C); adds saturate at 255
    rows = zip(widths.tolist(), fh.tolist(), fw.tolist(), tops.tolist(), lefts_on_canvas.tolist())  # Python ints: a cheaper loop
    for row, (w, th, tw, top, left) in enumerate(rows):
        strip = strips[row, :, :w]
        if (th, tw) != (h, w):
            strip = Image.frombuffer("L", (w, h), np.ascontiguousarray(strip), "raw", "L", 0, 1)
            strip = np.asarray(strip.resize((tw, th), resample=RESAMPLE))
        canvas[row, top : top + th, left : left + tw] = strip  # the first thing on this canvas

    sy, sx = (fh / h)[:, None], (fw / widths)[:, None]  # (B, 1) the exact per-axis scales PIL used
    top, left = tops[:, None], lefts_on_canvas[:, None]
    y0, y1 = np.rint(top + drops * sy), np.rint(top + (drops + DIGIT) * sy)  # (B, 5)
    x0, x1 = np.rint(left + lefts * sx), np.rint(left + (lefts + DIGIT) * sx)  # (B, 5)
    out["boxes"][present] = np.stack([y0, x0, y1 - y0, x1 - x0], axis=-1)[present]
    out["labels"][present] = pool_labels[digits][present]
    out["lengths"][:] = lengths
    # Pasted under the digits (addition commutes, so the order of pasting does not change the bytes).
    add_clutter(canvas, streams, pool_images, start, recipe.clutter_count, recipe.clutter_size)
    out["images"] = canvas[..., None]  # (B, C, C, 1)
    return out


def _widen(values: np.ndarray, width: int) -> np.ndarray:
    """(B, k) -> (B, width), zeros on the right (ragged draws to the five cells)."""
    wide = np.zeros((len(values), width), np.int64)
    wide[:, : values.shape[1]] = values
    return wide


def pair_positions(integers, b: int, canvas: int, overlap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (B, 2) = (top, left) of two 28x28 cells on a `canvas`-wide square, each
    uniform over the positions fully inside; without `overlap` the second is drawn again (rows
    still overlapping only) until the cells do not overlap. `integers(low, high, size=2, rows=None)`
    draws (B, 2) or (len(rows), 2) integers: `SampleStreams.integers` in the builder, or
    `epoch_integers` for training augmentation (`pipelines.batches`)."""
    first = integers(0, canvas - DIGIT + 1, size=2)  # (B, [top, left])
    second = np.empty_like(first)
    todo = np.arange(b)
    while len(todo):  # rejection sampling: the second digit must not overlap the first
        second[todo] = integers(0, canvas - DIGIT + 1, size=2, rows=todo)
        if overlap:
            break
        todo = todo[~np.any(np.abs(second[todo] - first[todo]) >= DIGIT, axis=1)]
    return first, second


def reading_swap(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(B,) True where the cell at `second` (B, 2) comes before the one at `first` in reading
    order: by left edge, then top edge."""
    return (second[:, 1] < first[:, 1]) | ((second[:, 1] == first[:, 1]) & (second[:, 0] < first[:, 0]))


def epoch_integers(rng: np.random.Generator, b: int):
    """An `integers(low, high, size, rows=None)` for `pair_positions` that draws from one
    generator: (b, size) integers, or (len(rows), size)."""
    return lambda low, high, size, rows=None: rng.integers(low, high, size=(b if rows is None else len(rows), size))


def generate_pairs(
    recipe: PairsRecipe, pool_images: np.ndarray, pool_labels: np.ndarray, split: str, start: int, stop: int
) -> dict[str, np.ndarray]:
    """Samples [start, stop) of `split`: two digits on a canvas, images (B, C, C, 1) uint8,
    labels (B, 5) (two digits in reading order, then blanks), lengths (B,) = 2, boxes (B, 5, 4)."""
    b, c, n_pool = stop - start, recipe.canvas, len(pool_labels)
    out = _empty(b)
    streams = SampleStreams(recipe.seed, split, start, stop)
    pairs = np.stack([start + np.arange(b), other_digits(streams, n_pool, start, 1)[:, 0]], axis=1)  # (B, 2)
    first, second = pair_positions(streams.integers, b, c, recipe.overlap)
    swap = reading_swap(first, second)
    digits = np.where(swap[:, None], pairs[:, ::-1], pairs)  # (B, 2) pool indices in reading order
    at = np.where(swap[:, None, None], np.stack([second, first], axis=1), np.stack([first, second], axis=1))  # (B, 2, 2)
    canvas = np.zeros((b, c, c), np.uint8)  # (B, C, C); pastes saturate at 255
    add_clutter(canvas, streams, pool_images, start, recipe.clutter_count, recipe.clutter_size)
    for j in range(2):
        paste(canvas, pool_images[digits[:, j]], at[:, j, 0], at[:, j, 1])
    out["images"] = canvas[..., None]  # (B, C, C, 1)
    out["labels"][:, :2] = pool_labels[digits]
    out["lengths"][:] = 2
    out["boxes"][:, :2] = np.concatenate([at, np.full((b, 2, 2), DIGIT)], axis=2)
    return out


class SequenceFamily:
    """Builder of multi-digit MNIST datasets; the build machinery calls these methods."""

    task = "sequence"
    max_length = MAX_LENGTH
    sources = ("mnist", "sample")  # the real files (cache) or the embedded sample

    def __init__(self, recipe_type, generate_fn, gil_bound: bool):
        self.recipe_type = recipe_type
        self._generate = generate_fn
        self.gil_bound = gil_bound  # per-sample Python work (threads do not scale): processes

    def make_recipe(self, source: str, **options):
        if options.get("val_size") is None:
            n_train = len(load_mnist(source).train_labels) if source == "sample" else 60000
            options["val_size"] = n_train // 10  # as the MNIST canvas datasets
        return self.recipe_type(source=source, **options)

    def load_source(self, recipe, source_dir: str | None = None) -> MnistSource:
        return load_mnist(recipe.source, source_dir if recipe.source == "mnist" else None)

    def split_sizes(self, recipe, source: MnistSource) -> dict[str, int]:
        return {split: len(labels) for split, (_, labels) in split_pools(recipe, source).items()}

    def array_specs(self, recipe) -> dict[str, tuple[tuple[int, ...], str]]:
        c = recipe.canvas
        return {
            "images": ((c, c, 1), "uint8"),
            "labels": ((MAX_LENGTH,), "uint8"),
            "lengths": ((), "uint8"),
            "boxes": ((MAX_LENGTH, 4), "int32"),
        }

    def generate(self, recipe, source: MnistSource, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
        pool_images, pool_labels = split_pools(recipe, source)[split]
        return self._generate(recipe, pool_images, pool_labels, split, start, stop)

    def store_attrs(self, recipe, source: MnistSource) -> dict:
        return {"max_length": MAX_LENGTH}


SEQUENCES = SequenceFamily(SequenceRecipe, generate_sequences, gil_bound=True)  # a strip and a resize per sample
PAIRS = SequenceFamily(PairsRecipe, generate_pairs, gil_bound=False)
