"""Reading visatt stores: what a store holds (`open_store`) and its splits (`Split`).

The one store reader of the code base: `visatt-data`, `pipelines.load` and the trainer all read
through it. A store is found wherever `pipelines.store.zarr_store` reaches (a folder, a packed
file, a URL) or in the local cache by name (`pipelines.catalog`).

Everything a reader needs to know about the data (dataset name, version, recipe digest, task,
number of classes, image shape) comes from the root attributes `attrs["visatt"]` and the arrays
(docs/store-layout.md), never from constants here.

A split is held in memory when its (limited) images and labels fit under `memory_limit` bytes,
and read chunk by chunk otherwise. Either way its content is checked against the digests the
builder recorded: a split in memory (or a limited prefix) when it is opened, a whole split that
is streamed while its first full pass reads it (no second pass). A deleted chunk (which zarr
would read as zeros), a flipped byte or an edited label is refused with a one-line StoreError.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import zarr

from pipelines import store as store_lib
from pipelines.catalog import resolve
from pipelines.lock import Lock, compare
from pipelines.store import StoreError

ATTRS_KEY = store_lib.ATTRS_KEY
SPLITS = ("train", "val", "test")
DEFAULT_MEMORY_LIMIT = 2 * 1024**3  # bytes of a split held in memory; larger splits are streamed


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """What a store says about itself (root attributes) plus its split sizes and image shape."""

    path: str | Path  # the location it was opened from: a local Path, or a URL string
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
    root: zarr.Group = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def location(self) -> str:
        """Where the store is, as a run records it: an absolute local path, or the URL."""
        return str(self.path) if store_lib.is_url(self.path) else str(Path(self.path).resolve())

    @property
    def identity(self) -> dict:
        """The facts that name the data a model was trained on (recorded in run.json)."""
        return {"dataset": self.dataset, "version": self.version, "recipe_digest": self.recipe_digest}


def open_store(location, *, verify: bool = True, lock_path=None) -> StoreInfo:
    """Read and check a store's attributes; raises StoreError with a one-line reason.

    `location`: a store folder, a packed store file, a URL (see `pipelines.store.zarr_store`),
    or a dataset in the local cache by name, `NAME[@VERSION][:SOURCE]` (`visatt-data get`).
    `verify`: a store that says it is a locked version must record the lock's digests (its
    content is then checked against them by each `Split`)."""
    path = resolve(location)
    root = store_lib.open_root(path)
    attrs = root.attrs.get(ATTRS_KEY)
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
    if verify:
        check_lock(path, attrs, lock_path)
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
        root=root,
    )


def check_lock(location, attrs, lock_path=None) -> None:
    """Refuse a store whose recorded recipe or digests differ from the lock entry of the version
    it names (a store with no version, or a version this lock does not know, is not checked)."""
    version = attrs.get("version")
    source = (attrs.get("recipe") or {}).get("source")
    if not version:
        return
    lock = Lock(lock_path)
    entry = lock.entry(attrs["dataset"], version, source)
    if entry is None:
        return
    differ = compare(entry["digests"], dict(attrs.get("digests", {})))
    if entry["recipe_digest"] != attrs.get("recipe_digest"):
        differ.insert(0, "recipe")
    if differ:
        raise StoreError(f"{location}: says it is {attrs['dataset']} {version} ({source}), but its {', '.join(differ)} "
                         f"differ from {lock.path}")


class Split:
    """The first `limit` samples of one split, in memory or read chunk by chunk.

    `read_chunks(chunks)` returns (images, labels) of whole chunks concatenated in the given
    order; `read(indices)` any samples in the given order.
    """

    def __init__(self, info: StoreInfo, name: str, *, limit: int | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 verify: bool = True):
        if name not in info.splits:
            raise StoreError(f"{info.path}: no split {name!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        group = info.root[name]
        self.info, self.name, self.verify = info, name, verify
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
        # A whole split streamed in digest-sized chunks is checked while it is read (its first
        # pass, e.g. the first epoch, completes the digests); anything else is checked now.
        self._pending = None  # name -> block digest of each chunk seen so far
        self.failure = None  # the StoreError of a read that failed (frameworks may wrap what they re-raise)
        self._last_chunk = None  # (chunk, images, labels) last read for `split[i]` of a streamed split
        if verify and not self.in_memory and self.size == self._images.shape[0] and self.chunk == store_lib.CHUNK:
            self._expected()
            self._pending = {"images": {}, "labels": {}}
        elif verify:
            self._verify()

    @property
    def verified(self) -> bool:
        """False while a streamed split's first full pass has not yet completed its digests."""
        return self._pending is None

    def _expected(self) -> dict[str, str]:
        return {name: self._recorded_digest(name) for name in ("images", "labels")}

    def _recorded_digest(self, name: str) -> str:
        key = f"{self.name}/{name}"
        if key not in self.info.digests:
            raise StoreError(f"{self.info.path}: no recorded digest for {key}, so its content cannot be checked")
        return self.info.digests[key]

    def _check_chunk(self, start: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Record the block digests of the chunk at `start`; when every chunk has been seen,
        compare the arrays' digests with the recorded ones (StoreError on a difference)."""
        c = start // self.chunk
        for name, data in (("images", images), ("labels", labels)):
            if c not in self._pending[name]:
                self._pending[name][c] = store_lib.block_digest(data)
        if all(len(seen) == self.num_chunks for seen in self._pending.values()):
            pending, self._pending = self._pending, None
            for name, want in self._expected().items():
                array = self._images if name == "images" else self._labels
                got = store_lib.combine_digests(array.shape, array.dtype, [pending[name][i] for i in range(self.num_chunks)])
                if got != want:
                    self._pending = pending  # still unproven: every later completion fails again
                    self.failure = self._mismatch(name)
                    raise self.failure

    def _mismatch(self, name: str) -> StoreError:
        return StoreError(f"{self.info.path}: {self.name}/{name} does not match its recorded digest (a damaged or "
                          f"edited store; `visatt-data verify {self.info.path}` names what differs)")

    def _verify(self) -> None:
        """Refuse data that differs from the digests the builder recorded (a deleted chunk that
        zarr would read as zeros, a flipped byte, an edited label): the digest of each array is
        recomputed from the bytes held in memory when the whole split is, else in one pass over
        the store, chunk by chunk (`pipelines.store.array_digest`)."""
        expected = self._expected()
        for name, array, cached in (("images", self._images, 0), ("labels", self._labels, 1)):
            whole = self.in_memory and self.size == array.shape[0]
            try:
                got = store_lib.array_digest(self._cache[cached] if whole else array)
            except Exception as e:  # a chunk that does not decode
                raise StoreError(f"{self.info.path}: {self.name}/{name} is unreadable ({store_lib.first_line(e)})") from None
            if got != expected[name]:
                raise self._mismatch(name)

    def _read_zarr(self, name: str, start: int, stop: int) -> np.ndarray:
        array = self._images if name == "images" else self._labels
        try:
            return np.asarray(array[start:stop])
        except Exception as e:  # a chunk that does not decode
            self.failure = StoreError(f"{self.info.path}: {self.name}/{name} is unreadable ({store_lib.first_line(e)})")
            raise self.failure from None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, C) uint8, label () or (L,) uint8) of sample `index`: a map-style dataset,
        so a PyTorch `DataLoader` can wrap a split directly (see `as_torch` for transforms)."""
        index = int(index)
        if not -self.size <= index < self.size:
            raise IndexError(f"sample {index} out of range for {self.size} samples")
        index %= self.size
        if self.in_memory:
            return self._cache[0][index], self._cache[1][index]
        c = index // self.chunk  # streamed: keep the last decoded chunk (a chunk per sample would be 1000x the work)
        if self._last_chunk is None or self._last_chunk[0] != c:
            self._last_chunk = (c, *self._read_range(*self.chunk_range(c)))
        _, images, labels = self._last_chunk
        return images[index - c * self.chunk], labels[index - c * self.chunk]

    @property
    def images(self) -> np.ndarray:
        """All images (N, H, W, C) uint8 (read in full when the split is streamed)."""
        return self.arrays[0]

    @property
    def labels(self) -> np.ndarray:
        """All labels: (N,) digits, or (N, L) digits padded with the blank class 10."""
        return self.arrays[1]

    # ------------------------------------------------------------ adapters

    def as_keras(self, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0, crop=None,
                 random_crop: bool = False, drop_remainder: bool = False):
        """A `keras.utils.PyDataset` of (images, labels) batches for `fit`/`evaluate`/`predict`
        (on any Keras backend): a seeded new order each epoch when `shuffle` (`pipelines.batches`)."""
        from pipelines.batches import Batches

        return Batches(self, batch_size, shuffle=shuffle, seed=seed, crop=crop, random_crop=random_crop,
                       drop_remainder=drop_remainder, auto_epoch=True)

    def as_tf_dataset(self, batch_size: int | None = None, *, shuffle: bool = False, seed: int = 0):
        """A `tf.data.Dataset` of (image, label) pairs, or of batches when `batch_size` is given;
        each pass over it (each epoch) draws the next seeded order when `shuffle`."""
        import itertools

        import tensorflow as tf

        from pipelines.batches import Batches

        epochs = itertools.count()
        read_size = batch_size or 256

        def generate():
            batches = Batches(self, read_size, shuffle=shuffle, seed=seed, epoch=next(epochs))
            for i in range(len(batches)):
                images, labels = batches[i]
                if batch_size:
                    yield images, labels
                else:
                    yield from zip(images, labels)

        count = len(Batches(self, read_size, shuffle=False)) if batch_size else len(self)
        lead = (None,) if batch_size else ()
        signature = (tf.TensorSpec(lead + self.info.image_shape, tf.uint8),
                     tf.TensorSpec(lead + tuple(self._labels.shape[1:]), tf.uint8))
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.apply(tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)

    def as_torch(self, transform=None, target_transform=None) -> "MapDataset":
        """A map-style dataset for `torch.utils.data.DataLoader` (torch is not needed to make it):
        item i is `(transform(image), target_transform(label))`, numpy uint8 by default (the
        DataLoader's default collate turns them into tensors)."""
        return MapDataset(self, transform, target_transform)

    def read_array(self, name: str) -> np.ndarray:
        """The split's first `len(self)` rows of another of its arrays (`boxes`, `lengths`), read
        whole and checked against the digest the builder recorded (StoreError on a difference)
        unless the split was opened with `verify=False`."""
        key = f"{self.name}/{name}"
        if name not in self.info.root[self.name]:
            raise StoreError(f"{self.info.path}: no array {key}")
        try:
            data = np.asarray(self.info.root[self.name][name][:])
        except Exception as e:  # a chunk that does not decode
            raise StoreError(f"{self.info.path}: {key} is unreadable ({store_lib.first_line(e)})") from None
        if self.verify and store_lib.array_digest(data) != self._recorded_digest(name):
            raise self._mismatch(name)
        return data[: self.size]

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
        images, labels = self._read_zarr("images", start, stop), self._read_zarr("labels", start, stop)
        if self._pending is not None:
            for a in range(start - start % self.chunk, stop, self.chunk):  # every whole chunk inside the range
                b = min(a + self.chunk, self.size)
                if a >= start and b <= stop:
                    self._check_chunk(a, images[a - start : b - start], labels[a - start : b - start])
        return images, labels


@contextlib.contextmanager
def store_failures(*splits: Split):
    """Re-raise a split's StoreError as itself when a framework reading it (TensorFlow runs a
    Keras PyDataset inside its own ops) wrapped it into an error of its own."""
    for split in splits:
        split.failure = None  # only a failure of this block is substituted
    try:
        yield
    except StoreError:
        raise
    except Exception:
        for split in splits:
            if split.failure is not None:
                raise split.failure from None
        raise


class MapDataset:
    """`Split.as_torch()`: samples of a split by index, with optional transforms."""

    def __init__(self, split: Split, transform=None, target_transform=None):
        self.split, self.transform, self.target_transform = split, transform, target_transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image, label = self.split[index]
        return (self.transform(image) if self.transform else image,
                self.target_transform(label) if self.target_transform else label)
