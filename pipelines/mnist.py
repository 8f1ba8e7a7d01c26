"""Translated and cluttered MNIST (Mnih et al. 2014; Ba et al. 2015; the seed article).

A 28x28 MNIST digit is pasted fully inside a blank canvas at a uniformly random position; the
cluttered variants first add `clutter_count` random `clutter_size` x `clutter_size` crops of
*other* random digits of the same split, also fully inside. Overlaps add and clip at 255; pixels
stay uint8 (never binarised).

Splits: `train` and `val` partition MNIST's 60k training digits by a seeded permutation
(`val_size` digits go to `val`); `test` is MNIST's 10k test digits in file order. Every source
digit is the main digit of exactly one canvas of its split.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from pipelines.canvas import DIGIT, SampleStreams, add_clutter, named_rng, paste
from pipelines.sources import MnistSource, load_mnist

_PERMUTATION = 1000  # spawn key of the train/val permutation (sample keys use split codes 0..3)


@dataclasses.dataclass(frozen=True)
class MnistCanvasRecipe:
    """Everything that decides the bytes of a translated/cluttered MNIST store."""

    canvas: int = 100
    clutter_count: int = 8
    clutter_size: int = 9
    val_size: int = 6000
    seed: int = 0
    source: str = "mnist"  # "mnist" (the real files, from the cache) or "sample" (embedded)
    generator: int = 1  # bumped whenever the sampling code changes the bytes

    def __post_init__(self):
        if self.canvas < DIGIT:
            raise ValueError(f"canvas {self.canvas} is smaller than a {DIGIT}x{DIGIT} digit")
        if not 1 <= self.clutter_size <= DIGIT:
            raise ValueError(f"clutter size {self.clutter_size} must be in 1..{DIGIT}")
        if self.clutter_count < 0 or self.val_size < 0 or self.seed < 0:
            raise ValueError("clutter count, val size and seed must be non-negative")


class MnistCanvasFamily:
    """Builder of single-digit canvases; the build machinery calls these four methods."""

    recipe_type = MnistCanvasRecipe
    task = "digit"
    sources = ("mnist", "sample")  # the real files (cache) or the embedded sample
    gil_bound = False  # whole-chunk numpy work (`SampleStreams`): where processes must be spawned, threads win

    def make_recipe(self, source: str, **options) -> MnistCanvasRecipe:
        if options.get("val_size") is None:
            n_train = len(load_mnist(source).train_labels) if source == "sample" else 60000
            options["val_size"] = n_train // 10  # 6,000 of MNIST's 60,000, as the seed article
        return MnistCanvasRecipe(source=source, **options)

    def load_source(self, recipe: MnistCanvasRecipe, source_dir: str | None = None) -> MnistSource:
        return load_mnist(recipe.source, source_dir if recipe.source == "mnist" else None)

    def split_sizes(self, recipe: MnistCanvasRecipe, source: MnistSource) -> dict[str, int]:
        pools = split_pools(recipe, source)
        return {split: len(labels) for split, (_, labels) in pools.items()}

    def array_specs(self, recipe: MnistCanvasRecipe) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-sample shape and dtype of every array of a split."""
        c = recipe.canvas
        return {"images": ((c, c, 1), "uint8"), "labels": ((), "uint8"), "boxes": ((4,), "int32")}

    def generate(self, recipe: MnistCanvasRecipe, source: MnistSource, split: str, start: int, stop: int):
        return generate(recipe, source, split, start, stop)


def split_pools(recipe: MnistCanvasRecipe, source: MnistSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of the source digits of each split, in sample order."""
    return _split_pools(recipe.seed, recipe.val_size, source)


@functools.lru_cache(maxsize=8)
def _split_pools(seed: int, val_size: int, source: MnistSource):
    n = len(source.train_labels)
    if val_size > n:
        raise ValueError(f"val size {val_size} exceeds the {n} training digits of source {source.name!r}")
    order = named_rng(seed, _PERMUTATION).permutation(n)
    train, val = np.sort(order[: n - val_size]), np.sort(order[n - val_size :])
    return {
        "train": (source.train_images[train], source.train_labels[train]),
        "val": (source.train_images[val], source.train_labels[val]),
        "test": (source.test_images, source.test_labels),
    }


def generate(recipe: MnistCanvasRecipe, source: MnistSource, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples [start, stop) of `split`: images (B, C, C, 1) uint8, labels (B,), boxes (B, 4)."""
    pool_images, pool_labels = split_pools(recipe, source)[split]
    b, c, k, n_clutter = stop - start, recipe.canvas, recipe.clutter_size, recipe.clutter_count
    streams = SampleStreams(recipe.seed, split, start, stop)  # sample i draws from its own generator
    top, left = streams.integers(0, c - DIGIT + 1, size=2).T  # (B,), (B,)
    canvas = np.zeros((b, c, c), np.uint8)  # (B, C, C); pastes saturate at 255
    # Distractors first, as DeepMind's generator (addition commutes anyway).
    add_clutter(canvas, streams, pool_images, start, n_clutter, k)
    paste(canvas, pool_images[start:stop], top, left)
    images = canvas[..., None]  # (B, C, C, 1)
    boxes = np.stack([top, left, np.full(b, DIGIT), np.full(b, DIGIT)], axis=1).astype(np.int32)
    return {"images": images, "labels": pool_labels[start:stop].copy(), "boxes": boxes}
