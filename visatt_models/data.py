"""Reading visatt Zarr stores for training: store facts, splits and shuffled batches.

The store layout is documented in docs/store-layout.md; everything the trainer needs to know
about the data (dataset name, version, recipe digest, task, number of classes, image shape)
comes from the root attributes `attrs["visatt"]` and the arrays, never from constants here.

A split is held in memory when its (limited) images and labels fit under `memory_limit`
bytes, and streamed chunk by chunk otherwise. Either way a `Batches` iterator (a
`keras.utils.PyDataset`, so `fit` accepts it on TensorFlow and JAX) yields
`(images (B, H, W, C) uint8, labels (B,) or (B, L) uint8)`.

Cropping. With `crop=(h, w)` a `Batches` yields h x w crops: at random offsets when
`random_crop` (training augmentation, Goodfellow et al. 2013's 54x54 crops of 64x64), drawn from
`default_rng(SeedSequence(seed, spawn_key=(CROP_KEY, e)))` and indexed by the sample's index in
the split, so a sample's crop depends only on (seed, epoch, index); otherwise the centre crop.

Shuffling. The order of epoch `e` is drawn from its own generator,
`default_rng(SeedSequence(seed, spawn_key=(SHUFFLE_KEY, e)))`, so it depends only on the run
seed and the epoch number: a resumed run sees exactly the batches the uninterrupted run would
have seen. A streamed split is shuffled in two levels, as a shuffle buffer would: the order of
its chunks is permuted, consecutive chunks are grouped into windows that fit the memory limit,
and samples are permuted within each window. A split held in memory is one window, so its
samples are permuted uniformly.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import keras
import numpy as np
import zarr

from pipelines import store as store_lib
from visatt_models.config import DEFAULT_MEMORY_LIMIT

ATTRS_KEY = "visatt"
SPLITS = ("train", "val", "test")
SHUFFLE_KEY = 0x5EED  # spawn key that separates the data order from other uses of the run seed
CROP_KEY = 0xC409  # ... and the crop offsets


class StoreError(Exception):
    """A store is missing, unreadable or not a visatt store (one-line message)."""


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """What a store says about itself (root attributes) plus its split sizes and image shape."""

    path: Path
    dataset: str
    version: str | None
    frozen: bool
    recipe_digest: str
    task: str  # "digit" or "sequence"
    num_classes: int  # digit classes (a sequence store's blank class comes on top)
    max_length: int | None  # label positions of a sequence store
    image_shape: tuple[int, ...]  # (H, W, C)
    splits: dict[str, int]  # split -> number of samples in the store
    digests: dict[str, str]  # "<split>/<array>" -> array digest
    recipe: dict  # the recipe the store was built from

    @property
    def identity(self) -> dict:
        """The facts that name the data a model was trained on (recorded in run.json)."""
        return {"dataset": self.dataset, "version": self.version, "recipe_digest": self.recipe_digest}


def open_store(path: str | Path) -> StoreInfo:
    """Read and check a store's attributes; raises StoreError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    try:
        with warnings.catch_warnings():  # consolidated metadata is a zarr extension: it warns
            warnings.simplefilter("ignore")
            root = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    except Exception as e:  # zarr raises several types for a folder that is not a group
        raise StoreError(f"{path}: not a readable Zarr v3 store ({type(e).__name__}: {e})") from None
    attrs = root.attrs.get(ATTRS_KEY)
    if attrs is None:
        raise StoreError(f"{path}: not a visatt store (no '{ATTRS_KEY}' root attributes)")
    missing = [k for k in ("dataset", "recipe_digest", "task", "num_classes") if k not in attrs]
    if missing:
        raise StoreError(f"{path}: root attributes lack {', '.join(missing)}")
    sizes, shapes = {}, set()
    for split in SPLITS:
        if split not in root:
            raise StoreError(f"{path}: no '{split}' split")
        group = root[split]
        if "images" not in group or "labels" not in group:
            raise StoreError(f"{path}: split '{split}' lacks images or labels")
        images, labels = group["images"], group["labels"]
        if images.dtype != np.uint8 or images.ndim != 4 or labels.shape[0] != images.shape[0]:
            raise StoreError(f"{path}: {split}/images must be (N, H, W, C) uint8 with N labels")
        sizes[split] = int(images.shape[0])
        shapes.add(tuple(int(d) for d in images.shape[1:]))
    if len(shapes) != 1:
        raise StoreError(f"{path}: splits have different image shapes {sorted(shapes)}")
    if attrs["task"] == "sequence" and "max_length" not in attrs:
        raise StoreError(f"{path}: a sequence store's root attributes lack max_length")
    return StoreInfo(
        path=path,
        dataset=str(attrs["dataset"]),
        version=attrs.get("version"),
        frozen=bool(attrs.get("frozen", False)),
        recipe_digest=str(attrs["recipe_digest"]),
        task=str(attrs["task"]),
        num_classes=int(attrs["num_classes"]),
        max_length=int(attrs["max_length"]) if "max_length" in attrs else None,
        image_shape=shapes.pop(),
        splits=sizes,
        digests=dict(attrs.get("digests", {})),
        recipe=dict(attrs.get("recipe", {})),
    )


class Split:
    """The first `limit` samples of one split, in memory or read chunk by chunk.

    `read_chunks(chunks)` returns (images, labels) of whole chunks concatenated in the given
    order; `read(indices)` any samples in the given order.
    """

    def __init__(self, info: StoreInfo, name: str, *, limit: int | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT):
        if name not in info.splits:
            raise StoreError(f"{info.path}: no split {name!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = zarr.open_group(store=str(info.path), mode="r", zarr_format=3)[name]
        self.info, self.name = info, name
        self._images, self._labels = group["images"], group["labels"]
        self.size = info.splits[name] if limit is None else min(limit, info.splits[name])
        self.chunk = int(self._images.chunks[0])  # samples per chunk
        self.num_chunks = -(-self.size // self.chunk)
        self.sample_bytes = int(np.prod(self._images.shape[1:])) + int(np.prod(self._labels.shape[1:], dtype=int))
        self.in_memory = self.size * self.sample_bytes <= memory_limit
        # Streaming keeps two windows (the current one and the next) within the memory limit.
        self.window_chunks = self.num_chunks if self.in_memory else max(1, memory_limit // (2 * self.chunk * self.sample_bytes))
        if self.in_memory:
            self._cache = (self._read_zarr("images", 0, self.size), self._read_zarr("labels", 0, self.size))
        self._verify()

    def _verify(self) -> None:
        """Refuse data that differs from the digests the builder recorded (a deleted chunk that
        zarr would read as zeros, a flipped byte, an edited label): the digest of each array is
        recomputed from the bytes held in memory when the whole split is, else in one pass over
        the store, chunk by chunk (`pipelines.store.array_digest`)."""
        for name, array, cached in (("images", self._images, 0), ("labels", self._labels, 1)):
            key = f"{self.name}/{name}"
            want = self.info.digests.get(key)
            if want is None:
                raise StoreError(f"{self.info.path}: no recorded digest for {key}, so its content cannot be checked")
            whole = self.in_memory and self.size == array.shape[0]
            try:
                got = store_lib.array_digest(self._cache[cached] if whole else array)
            except Exception as e:  # a chunk that does not decode
                raise StoreError(f"{self.info.path}: {key} is unreadable ({store_lib.first_line(e)})") from None
            if got != want:
                raise StoreError(f"{self.info.path}: {key} does not match its recorded digest (a damaged or edited "
                                 f"store; `visatt-data verify {self.info.path}` names what differs)")

    def _read_zarr(self, name: str, start: int, stop: int) -> np.ndarray:
        array = self._images if name == "images" else self._labels
        try:
            return np.asarray(array[start:stop])
        except Exception as e:  # a chunk that does not decode
            raise StoreError(f"{self.info.path}: {self.name}/{name} is unreadable ({store_lib.first_line(e)})") from None

    def __len__(self) -> int:
        return self.size

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the whole split; reads it all when it is streamed."""
        return self._cache if self.in_memory else self._read_range(0, self.size)

    def chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min((c + 1) * self.chunk, self.size)

    def read_chunks(self, chunks) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._read_range(*self.chunk_range(c)) for c in chunks]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        if self.in_memory:
            return self._cache[0][indices], self._cache[1][indices]
        chunks = np.unique(indices // self.chunk)
        images, labels = self.read_chunks(chunks)
        position = np.searchsorted(chunks, indices // self.chunk) * self.chunk + indices % self.chunk
        return images[position], labels[position]

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if self.in_memory:
            return self._cache[0][start:stop], self._cache[1][start:stop]
        return self._read_zarr("images", start, stop), self._read_zarr("labels", start, stop)



class Batches(keras.utils.PyDataset):
    """Batches of a split for `fit`/`evaluate`/`predict`: `(images, labels)` numpy arrays.

    shuffle: draw a new order every epoch (see the module docstring); call `set_epoch(e)`
        before epoch `e` (the trainer does it from a callback).
    drop_remainder: drop the last partial batch (training; when the split holds at least
        one full batch). Evaluation keeps every sample.
    crop: (h, w) crops of the images (see the module docstring), random ones when
        `random_crop`, else the centre crop; None: whole images.
    endless: index batches by the global step from the start of `epoch` (batch i is batch
        i mod len of epoch `epoch + i // len`) and report no length to Keras, which then feeds
        one endless stream (with `fit(steps_per_epoch=len(batches))`). Every batch is then a
        pure function of its step, so a loader that prefetches across an epoch boundary (Keras'
        TensorFlow path starts the next epoch's iterator before the epoch callbacks run) cannot
        see a stale order, and a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 drop_remainder: bool = False, crop: tuple[int, int] | None = None, random_crop: bool = False,
                 endless: bool = False):
        super().__init__(workers=1, use_multiprocessing=False)  # zarr must not run in forked workers
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.drop_remainder = drop_remainder and len(split) >= batch_size
        self.crop, self.random_crop = check_crop(crop, split.info.image_shape), random_crop and crop is not None
        self._offsets = None  # (N, 2) random crop offsets of the current epoch
        self.first_epoch, self.endless = epoch, endless
        self._epoch = None
        self._windows: dict[int, tuple] = {}  # window index -> (images, labels), at most 2 kept
        self.set_epoch(epoch)

    @property
    def samples_per_epoch(self) -> int:
        return len(self) * self.batch_size if self.drop_remainder else len(self.split)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.split)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    @property
    def num_batches(self) -> int | None:
        return None if self.endless else len(self)

    def set_epoch(self, epoch: int) -> None:
        """Fix the sample order of `epoch` (a pure function of the seed and `epoch`)."""
        if epoch == self._epoch:
            return
        self._epoch = epoch
        self._windows.clear()
        split = self.split
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(SHUFFLE_KEY, epoch))) if self.shuffle else None
        # In memory there is one window and its sample permutation is already uniform.
        chunk_order = rng.permutation(split.num_chunks) if rng is not None and not split.in_memory else np.arange(split.num_chunks)
        w = split.window_chunks
        self._window_chunks = [chunk_order[i : i + w] for i in range(0, split.num_chunks, w)]
        # order[k] = (window, position inside the window's concatenated chunks) of the k-th sample
        windows, positions, indices = [], [], []
        for i, chunks in enumerate(self._window_chunks):
            index = np.concatenate([np.arange(*split.chunk_range(c)) for c in chunks])  # split indices
            within = rng.permutation(len(index)) if rng is not None else np.arange(len(index))
            windows.append(np.full(len(index), i))
            positions.append(within)
            indices.append(index[within])
        self._order_window = np.concatenate(windows)  # (N,)
        self._order_position = np.concatenate(positions)  # (N,)
        self._order_index = np.concatenate(indices)  # (N,) index in the split of the k-th sample
        if self.random_crop:
            (height, width), (h, w) = split.info.image_shape[:2], self.crop
            crop_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(CROP_KEY, epoch)))
            self._offsets = crop_rng.integers(0, [height - h + 1, width - w + 1], size=(len(split), 2))  # (N, 2)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.endless and index >= 0:
            self.set_epoch(self.first_epoch + index // len(self))
            index %= len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        sl = slice(index * self.batch_size, min((index + 1) * self.batch_size, len(self.split)))
        window, position = self._order_window[sl], self._order_position[sl]
        images, labels = [], []
        for w in np.unique(window):  # a batch spans at most two consecutive windows
            data = self._window(int(w))
            pick = position[window == w]
            images.append(data[0][pick])
            labels.append(data[1][pick])
        images = np.concatenate(images)
        if self.crop is not None:
            offsets = self._offsets[self._order_index[sl]] if self.random_crop else None
            images = crop_images(images, self.crop, offsets)
        return images, np.concatenate(labels)

    def _window(self, w: int):
        if self.split.in_memory:  # one window: the whole split, in natural order
            return self.split.arrays
        if w not in self._windows:
            for old in [k for k in self._windows if k < w - 1 or k > w]:
                del self._windows[old]
            self._windows[w] = self.split.read_chunks(self._window_chunks[w])
        return self._windows[w]


def check_crop(crop, image_shape) -> tuple[int, int] | None:
    """`crop` as (h, w), checked against the images' (H, W, C); None stays None."""
    if crop is None:
        return None
    h, w = (int(v) for v in crop)
    if not (1 <= h <= image_shape[0] and 1 <= w <= image_shape[1]):
        raise ValueError(f"crop {h}x{w} does not fit the {image_shape[0]}x{image_shape[1]} images")
    return h, w


def crop_images(images: np.ndarray, crop: tuple[int, int], offsets: np.ndarray | None = None) -> np.ndarray:
    """h x w crops of images (B, H, W, C) at `offsets` (B, 2) = (top, left); None: the centre crop."""
    (height, width), (h, w) = images.shape[1:3], crop
    if offsets is None:
        top, left = (height - h) // 2, (width - w) // 2
        return np.ascontiguousarray(images[:, top : top + h, left : left + w])
    return np.stack([image[t : t + h, l : l + w] for image, (t, l) in zip(images, offsets)])
