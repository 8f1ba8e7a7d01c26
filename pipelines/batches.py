"""Shuffled, cropped batches of a store's splits, for training and for `Split.as_keras`.

Splits are read through `pipelines.reader` (the one store reader of the code base). A
`Batches` iterator (a
`keras.utils.PyDataset`, so `fit` accepts it on TensorFlow and JAX) yields
`(images (B, H, W, C) uint8, labels (B,) or (B, L) uint8)`.

Cropping. With `crop=(h, w)` a `Batches` yields h x w crops: at random offsets when
`random_crop` (training augmentation, Goodfellow et al. 2013's 54x54 crops of 64x64), drawn from
`default_rng(SeedSequence(seed, spawn_key=(CROP_KEY, e)))` and indexed by the sample's index in
the split, so a sample's crop depends only on (seed, epoch, index); otherwise the centre crop.

Shifting. With `shift=k` > 0 (training augmentation against overfitting a frozen training set)
every image (after cropping) is translated by (dy, dx), each drawn uniformly from -k..k by
`default_rng(SeedSequence(seed, spawn_key=(SHIFT_KEY, e)))` per sample index, as crop offsets
are; pixels moved in from outside are 0 (the MNIST stores' background) and pixels moved out
are lost. The labels stay: a sequence keeps its reading order under a translation, but ink near
the border can be cut (`mnist-sequences` shrinks strips of 3 or more digits to the full width,
so keep k small there). With `keep_ink` no ink is cut: each image's (dy, dx) is drawn uniformly
from the shifts of at most k that keep all its non-zero pixels inside (from a uniform number
per sample and axis, drawn as above, scaled onto that image's range), so a one-digit image of a
64x64 store can move anywhere with a large k while a strip that fills the width moves only up
and down. It suits stores of digits on a black background without clutter (`mnist-sequences`,
`mnist-pairs`, the translated sets): clutter counts as ink and pins a cluttered canvas, and on
natural images nothing moves. `ink_floor=f` (at most k) lets every image still move by up to f
each way, cutting ink where it must: a strip that fills the width then moves by up to f
sideways instead of not at all, while shorter numbers keep their ink-keeping range.

Repositioning. With `reposition` on an `mnist-pairs` store (two digits' 28x28 cells that do not
overlap, on an empty canvas) each training image is taken apart along the store's `boxes` and
both cells are pasted at new positions, drawn as the builder draws them
(`pipelines.sequences.pair_positions`: the first cell uniform over the canvas, the second drawn
again until it does not overlap the first) from
`default_rng(SeedSequence(seed, spawn_key=(REPOSITION_KEY, e)))` for every sample of the split at
once, indexed by the sample's index: a sample's positions depend on the seed, the epoch and the
split's size (a `limit`), not on the batches, the order or a resume. The two labels are put back
into reading order. The same digits then make new
pairs every epoch, and pairs stacked one above the other (left edges a few pixels apart, whose
order turns on those pixels) come up at their share of the recipe's draws each time rather
than only in the frozen images. It comes before cropping and shifting.

Permuting. With `permute` on an `mnist-sequences` store without clutter each training image's
digits trade places: every sample's first L cells (its `boxes`) get their contents in an order
drawn uniformly among the L! orders, from
`default_rng(SeedSequence(seed, spawn_key=(PERMUTE_KEY, e)))` for the whole split at once and
indexed by the sample's index (as repositioning's positions are), and the labels follow. The
cells keep their places and drops, so the strip keeps its layout and scale while the same digits
make other numbers every epoch. Each pixel goes with one cell (`cell_owners`): the nearest, and
where cells overlap (negative gaps) the one whose centre column is nearer, so no stroke is
doubled, and a cell takes the pixels up to `CELL_MARGIN` around its box (the spill of a shrunk
strip) along. An unchanged order gives the image back. A neighbour's stroke that reaches into a
shared column on the wrong side of the middle moves with the cell that takes it (13.0% of the
1.0.0 training images have ink where cells overlap, 4.6 pixels where any:
`benchmarks/sequence_cells.py`). It comes before cropping and shifting.

Rotating and shearing. With `rotate=r` and/or `shear=s` every training image is sheared
horizontally (x += k * y, y pointing down: a slant of the writing) by k drawn uniformly from
-s..s and then rotated by an angle drawn uniformly from -r..r degrees (counter-clockwise as seen
for positive angles), both about the image centre, by `default_rng(SeedSequence(seed,
spawn_key=(AFFINE_KEY, e)))` per sample index (as shifts are), and resampled bilinearly (Pillow)
with 0 for what comes from outside: the writer's own variation (Simard et al. 2003's affine
distortions of MNIST) that a frozen set shows each digit with once. The labels stay, so keep
both small: strips that fill the width lose the corners of their ends (`mnist-sequences` 1.0.0,
rotate 8 and shear 0.15: 0.43% of the first 10,000 training images lose more than 5% of their
ink; 10 and 0.2: 1.45%; `benchmarks/affine_ink.py`), and two digits stacked one above the other
(`mnist-pairs`) can trade places in reading order. It comes after repositioning and permuting
and before cropping and shifting (so `keep_ink` keeps the ink of the turned image).

Shuffling. The order of epoch `e` is drawn from its own generator,
`default_rng(SeedSequence(seed, spawn_key=(SHUFFLE_KEY, e)))`, so it depends only on the run
seed and the epoch number: a resumed run sees exactly the batches the uninterrupted run would
have seen. A streamed split is shuffled in two levels, as a shuffle buffer would: the order of
its chunks is permuted, consecutive chunks are grouped into windows that fit the memory limit,
and samples are permuted within each window. A split held in memory is one window, so its
samples are permuted uniformly.
"""

from __future__ import annotations

import threading

import keras
import numpy as np

from pipelines.affine import affine_images, check_affine
from pipelines.reader import Split
from pipelines.sequences import DIGIT, MAX_LENGTH, epoch_integers, pair_positions, reading_swap

SHUFFLE_KEY = 0x5EED  # spawn key that separates the data order from other uses of the run seed
CROP_KEY = 0xC409  # ... and the crop offsets
SHIFT_KEY = 0x5A1F  # ... and the shifts
REPOSITION_KEY = 0x9E05  # ... and the new positions of repositioned digits
PERMUTE_KEY = 0x9E27  # ... and the orders of permuted digits
AFFINE_KEY = 0xAFF1  # ... and the angles and shears


class Batches(keras.utils.PyDataset):
    """Batches of a split for `fit`/`evaluate`/`predict`: `(images, labels)` numpy arrays.

    shuffle: draw a new order every epoch (see the module docstring); call `set_epoch(e)`
        before epoch `e` (the trainer does it from a callback).
    drop_remainder: drop the last partial batch (training; when the split holds at least
        one full batch). Evaluation keeps every sample.
    crop: (h, w) crops of the images (see the module docstring), random ones when
        `random_crop`, else the centre crop; None: whole images.
    shift: translate each image by up to this many pixels in each direction (see the module
        docstring); 0: none.
    keep_ink: with `shift`, draw each image's shift only among those that keep all its non-zero
        pixels inside (see the module docstring).
    ink_floor: with `keep_ink`, every image may still move by up to this many pixels each way,
        even where that cuts ink (see the module docstring); 0: never cut.
    reposition: take each image's two digits apart and paste them at new positions, labels in
        reading order (`mnist-pairs` only; see the module docstring).
    permute: give each image's digits a new order among their cells, labels with them
        (`mnist-sequences` only; see the module docstring).
    rotate, shear: turn each image by up to `rotate` degrees either way and shear it by up to
        `shear` (x += k * y) either way, about its centre (see the module docstring); 0: none.
    prefetch: gather up to this many batches ahead in two background threads (0: none).
    auto_epoch: move to the next epoch's order when Keras ends an epoch (`on_epoch_end`).
    endless: index batches by the global step from the start of `epoch` (batch i is batch
        i mod len of epoch `epoch + i // len`) and report no length to Keras, which then feeds
        one endless stream (with `fit(steps_per_epoch=len(batches))`). Every batch is then a
        pure function of its step, so a loader that prefetches across an epoch boundary (Keras'
        TensorFlow path starts the next epoch's iterator before the epoch callbacks run) cannot
        see a stale order, and a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 drop_remainder: bool = False, crop: tuple[int, int] | None = None, random_crop: bool = False,
                 shift: int = 0, keep_ink: bool = False, ink_floor: int = 0, reposition: bool = False, permute: bool = False,
                 rotate: float = 0.0, shear: float = 0.0, endless: bool = False,
                 auto_epoch: bool = False, prefetch: int = 0):
        # Threads, never processes: zarr must not run in forked workers. With `prefetch`, Keras'
        # ordered enqueuer gathers up to that many batches ahead in two background threads while
        # the model steps: each reads its batch under a lock and augments it side by side with the
        # other (benchmarks/bench_loader.py --threads 1 2).
        super().__init__(workers=2 if prefetch else 1, use_multiprocessing=False, max_queue_size=max(1, prefetch))
        self._lock = threading.RLock()
        self.auto_epoch = auto_epoch
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.drop_remainder = drop_remainder and len(split) >= batch_size
        self.crop, self.random_crop = check_crop(crop, split.info.image_shape), random_crop and crop is not None
        self._offsets = None  # (N, 2) random crop offsets of the current epoch
        self.shift = check_shift(shift, self.crop or split.info.image_shape[:2])
        self.keep_ink = bool(keep_ink)
        if self.keep_ink and not self.shift:
            raise ValueError("keep_ink needs a shift (> 0)")
        self.ink_floor = check_ink_floor(ink_floor, self.shift, self.keep_ink)
        self._shifts = None  # (N, 2) (dy, dx) of the current epoch; with keep_ink, uniform numbers in [0, 1)
        self.reposition = bool(reposition)
        if self.reposition:
            self._canvas = check_reposition(split.info)
            self._boxes = split.read_array("boxes")[:, :2, :2]  # (N, 2, 2) (top, left) of both cells, reading order
        self._placed = None  # (N, 2, 2) the new (top, left) of both cells in the current epoch
        self.permute = bool(permute)
        if self.permute:
            check_permute(split.info)
            self._cells = split.read_array("boxes")  # (N, 5, 4) (top, left, height, width), zeros past the length
            self._lengths = np.count_nonzero(self._cells[:, :, 2], axis=1)  # (N,)
        self._order = None  # (N, 5) the cell whose content each cell gets in the current epoch
        self.rotate, self.shear = check_affine(rotate, shear)
        self._affine = None  # (N, 2) (degrees, shear) of the current epoch
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
        with self._lock:  # not while a background thread builds a batch from the current order
            self._set_epoch(epoch)

    def _set_epoch(self, epoch: int) -> None:
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
        if self.shift:
            shift_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(SHIFT_KEY, epoch)))
            if self.keep_ink:
                self._shifts = shift_rng.random(size=(len(split), 2))  # (N, 2), scaled per image in _augment
            else:
                self._shifts = shift_rng.integers(-self.shift, self.shift + 1, size=(len(split), 2))  # (N, 2)
        if self.reposition:
            place_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(REPOSITION_KEY, epoch)))
            n = len(split)
            self._placed = np.stack(pair_positions(epoch_integers(place_rng, n), n, self._canvas, overlap=False), axis=1)
        if self.permute:
            permute_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(PERMUTE_KEY, epoch)))
            self._order = digit_orders(permute_rng, self._lengths)
        if self.rotate or self.shear:
            affine_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(AFFINE_KEY, epoch)))
            self._affine = affine_rng.uniform(-1.0, 1.0, size=(len(split), 2)) * [self.rotate, self.shear]  # (N, 2)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:  # the epoch order and the window cache are shared state
            images, labels, samples, draws = self._gather(index)
        # The augmentation reads the batch, its epoch's draws (arrays that a new epoch replaces,
        # never changes) and what __init__ set (settings, boxes), so the prefetching threads run
        # it side by side.
        return self._augment(images, labels, samples, draws)

    def _gather(self, index: int):
        """The batch's stored (images, labels), its samples' indices in the split and the draws of
        its epoch (crop offsets, shifts, positions, orders, angles)."""
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
        draws = {"placed": self._placed, "order": self._order, "affine": self._affine, "offsets": self._offsets,
                 "shifts": self._shifts}
        return np.concatenate(images), np.concatenate(labels), self._order_index[sl], draws  # (B,) indices in the split

    def _augment(self, images: np.ndarray, labels: np.ndarray, samples: np.ndarray, draws: dict):
        if self.reposition:
            images, labels = reposition_pairs(images, labels, self._boxes[samples], draws["placed"][samples])
        if self.permute:
            images, labels = permute_digits(images, labels, self._cells[samples], draws["order"][samples])
        if draws["affine"] is not None:
            images = affine_images(images, draws["affine"][samples, 0], draws["affine"][samples, 1])
        if self.crop is not None:
            offsets = draws["offsets"][samples] if self.random_crop else None
            images = crop_images(images, self.crop, offsets)
        if self.shift:
            shifts = draws["shifts"][samples]
            if self.keep_ink:
                shifts = ink_keeping_shifts(images, self.shift, shifts, floor=self.ink_floor)
            images = shift_images(images, shifts)
        return images, labels

    def on_epoch_end(self) -> None:
        """Keras calls this after each epoch: with `auto_epoch` the next epoch's order is drawn
        (`Split.as_keras`; the trainer sets epochs itself)."""
        if self.auto_epoch:
            self.set_epoch(self._epoch + 1)

    def _window(self, w: int):
        if self.split.in_memory:  # one window: the whole split, in natural order
            return self.split.arrays
        if w not in self._windows:
            for old in [k for k in self._windows if k < w - 1 or k > w]:
                del self._windows[old]
            self._windows[w] = self.split.read_chunks(self._window_chunks[w])
        return self._windows[w]


def _check_family(info, family, forbidden: dict[str, str], needs: str) -> None:
    """ValueError unless `info`'s store is of the builder `family` with none of the `forbidden`
    recipe options set ({recipe key: its name in the message}); `needs` says what the caller
    needs, for the message."""
    from pipelines.datasets import DATASETS

    spec = DATASETS.get(info.dataset)
    if spec is None or spec.family is not family or any(info.recipe.get(key) for key in forbidden):
        own = spec is not None and spec.family is family
        raise ValueError(f"{needs}; this is a {info.dataset} store" + (f" with {' or '.join(forbidden.values())}" if own else ""))


def check_reposition(info) -> int:
    """The canvas size of a store whose images `reposition_pairs` can take apart (two digits'
    cells that do not overlap, no clutter: `mnist-pairs`); ValueError for any other store."""
    from pipelines.sequences import PAIRS

    _check_family(info, PAIRS, {"overlap": "overlap", "clutter_count": "clutter"},
                  "repositioning takes apart two digits that do not overlap on an empty canvas (mnist-pairs without "
                  "overlap or clutter)")
    return int(info.image_shape[0])  # square canvases


def reposition_pairs(images: np.ndarray, labels: np.ndarray, boxes: np.ndarray, placed: np.ndarray):
    """Images (B, C, C, 1) holding two digits' 28x28 cells at `boxes` (B, 2, 2) = (top, left) in
    reading order, with labels (B, L) (the two digits, then blanks), rebuilt with the cells at
    `placed` (B, 2, 2) (cell j of `boxes` to position j of `placed`; they must not overlap):
    (images, labels) with the two labels in the reading order of the new positions."""
    out = np.zeros_like(images)
    for image, target, cells, to in zip(images, out, boxes, placed):
        for (top, left), (new_top, new_left) in zip(cells, to):
            target[new_top : new_top + DIGIT, new_left : new_left + DIGIT] = image[top : top + DIGIT, left : left + DIGIT]
    swap = reading_swap(placed[:, 0], placed[:, 1])
    labels = labels.copy()
    labels[:, :2] = np.where(swap[:, None], labels[:, 1::-1], labels[:, :2])
    return out, labels


def check_permute(info) -> None:
    """Refuse (ValueError) a store whose digits `permute_digits` cannot trade places: anything but
    `mnist-sequences` without clutter (clutter would move with the cells it crosses)."""
    from pipelines.sequences import SEQUENCES

    _check_family(info, SEQUENCES, {"clutter_count": "clutter"},
                  "permuting digits trades the cells of a strip of MNIST digits on an empty canvas "
                  "(mnist-sequences without clutter)")


def digit_orders(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """(N, 5): for each sample a uniformly random order of its first `lengths` (N,) positions,
    the positions past its length in place."""
    positions = np.arange(MAX_LENGTH)
    keys = np.where(positions < lengths[:, None], rng.random((len(lengths), MAX_LENGTH)), 1.0 + positions)
    return np.argsort(keys, axis=1, kind="stable")


CELL_MARGIN = 2  # pixels around a cell that go with it (a shrunk strip's bilinear spill reaches 1-2 past its boxes)


def cell_owners(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, H, W): for every pixel the index of the cell it goes with, among `cells` (B, 5, 4) =
    (top, left, height, width) (height 0: absent). A pixel goes with the cell nearest to it (city
    block distance to the box, 0 inside), and where two cells overlap (negative gaps) with the
    one whose centre column is nearer: each pixel belongs to exactly one cell (the first of equals)."""
    b, y, x = (a.reshape(-1) for a in np.meshgrid(np.arange(len(cells)), np.arange(height), np.arange(width), indexing="ij"))
    return owners_at(cells, height, width, b, y, x).reshape(len(cells), height, width)


def owners_at(cells: np.ndarray, height: int, width: int, b: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`cell_owners` at the pixels (b, y, x) (n,) only: (n,) int8."""
    top, left, h, w = (cells[..., i].astype(np.int32) for i in range(4))  # (B, 5)
    rows, cols = np.arange(height, dtype=np.int32), np.arange(width, dtype=np.int32)
    # The key (distance first, then the centre column) is a row part plus a column part.
    row_key = np.maximum(0, np.maximum(top[..., None] - rows, rows - (top + h - 1)[..., None])) * (4 * width)  # (B, 5, H)
    outside_x = np.maximum(0, np.maximum(left[..., None] - cols, cols - (left + w - 1)[..., None]))
    col_key = outside_x * (4 * width) + np.abs(2 * cols - (2 * left + w - 1)[..., None])  # (B, 5, W)
    row_key = np.where((h > 0)[..., None], row_key, np.int32(2**30))  # absent cells lose to every present one
    keys = row_key.transpose(0, 2, 1)[b, y] + col_key.transpose(0, 2, 1)[b, x]  # (n, 5)
    return np.argmin(keys, axis=1).astype(np.int8)  # the first of equals


def permute_digits(images: np.ndarray, labels: np.ndarray, cells: np.ndarray, order: np.ndarray):
    """Images (B, H, W, C) holding digits' cells at `cells` (B, 5, 4) = (top, left, height, width)
    (height 0 past the length), labels (B, 5): (images, labels) where cell j holds what cell
    `order[j]` (B, 5) held and label j is label `order[j]`. Each cell's content is its own pixels
    (`cell_owners`) within its box and `CELL_MARGIN` around it; it is pasted with its top-left
    corner at the corner of the cell it goes to (cut at the border), taking the maximum where
    pasted contents meet. Ink farther than the margin from every cell is dropped. An unchanged
    order gives back the image wherever it has ink within the margin.

    Only ink moves (a pasted 0 changes no maximum): each ink pixel goes, with its owner k, by
    the offset from k's corner to the corner of the cell that receives k, all pixels of the batch
    at once."""
    height, width = images.shape[1:3]
    ink = images[..., 0] if images.shape[-1] == 1 else images.max(axis=-1)  # (B, H, W)
    b, y, x = np.unravel_index(np.flatnonzero(ink), ink.shape)  # (n,) the ink pixels (faster than np.nonzero)
    k = owners_at(cells, height, width, b, y, x)
    # Per cell (B, 5): the rows and columns its content is taken from (box and margin; none for an
    # absent cell) and the offset to the corner of the cell that receives it.
    top, left, h, w = (cells[..., i].astype(np.int32) for i in range(4))  # (B, 5)
    m = np.where(h > 0, CELL_MARGIN, 0)
    to = np.take_along_axis(cells[..., :2].astype(np.int32), np.argsort(order, axis=1)[..., None], axis=1)  # (B, 5, 2)
    table = np.stack([top - m, top + h + m, left - m, left + w + m, to[..., 0] - top, to[..., 1] - left], axis=-1)
    y0, y1, x0, x1, dy, dx = table.reshape(-1, 6)[b * cells.shape[1] + k].T  # (n,) each ink pixel's cell's
    ty, tx = y + dy, x + dx
    moves = (y >= y0) & (y < y1) & (x >= x0) & (x < x1) & (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
    out = np.zeros_like(images)
    np.maximum.at(out, (b[moves], ty[moves], tx[moves]), images[b[moves], y[moves], x[moves]])
    return out, np.take_along_axis(labels, order, axis=1)


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


def check_shift(shift, size) -> int:
    """`shift` as an int in 0 .. min(size) - 1 for images (or crops) of `size` (h, w, ...)."""
    if isinstance(shift, bool) or int(shift) != shift:
        raise ValueError(f"shift must be a whole number of pixels, got {shift!r}")
    shift = int(shift)
    if not 0 <= shift < min(size[0], size[1]):
        raise ValueError(f"shift {shift} must be in 0..{min(size[0], size[1]) - 1} for {size[0]}x{size[1]} images")
    return shift


def check_ink_floor(floor, shift: int, keep_ink: bool) -> int:
    """`floor` as an int in 0 .. `shift`, non-zero only with `keep_ink`."""
    if isinstance(floor, bool) or int(floor) != floor or not 0 <= int(floor) <= shift:
        raise ValueError(f"the ink floor must be a whole number of pixels in 0..{shift} (the shift), got {floor!r}")
    if floor and not keep_ink:
        raise ValueError("an ink floor belongs to keep_ink (without it every image moves by up to the shift)")
    return int(floor)


def ink_keeping_shifts(images: np.ndarray, shift: int, uniform: np.ndarray, floor: int = 0) -> np.ndarray:
    """(dy, dx) per image (B, 2): `uniform` (B, 2) numbers in [0, 1) mapped onto the shifts of at
    most `shift` pixels that keep every non-zero pixel of images (B, H, W, C) inside, widened to
    at least -floor..floor on each axis; an empty image may move by up to `shift`."""
    ink = images.max(axis=-1) > 0  # (B, H, W)
    out = np.empty(uniform.shape, np.int64)
    for axis, (lines, u) in enumerate(((ink.any(axis=2), uniform[:, 0]), (ink.any(axis=1), uniform[:, 1]))):
        size = lines.shape[1]  # lines (B, size): which rows (columns) hold ink
        first = np.where(lines.any(axis=1), lines.argmax(axis=1), size)  # no ink: as if beyond both ends
        last = np.where(lines.any(axis=1), size - 1 - lines[:, ::-1].argmax(axis=1), -1)
        low = np.maximum(-shift, -first)  # up (left) by at most `first` pixels
        high = np.minimum(shift, size - 1 - last)  # down (right) by at most the margin after `last`
        low, high = np.minimum(low, -floor), np.maximum(high, floor)  # the floor may cut ink
        out[:, axis] = low + np.minimum(np.floor(u * (high - low + 1)).astype(np.int64), high - low)
    return out


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Images (B, H, W, C) translated by `shifts` (B, 2) = (dy, dx) pixels (down, right), with 0
    where nothing moves in."""
    height, width = images.shape[1:3]
    out = np.zeros_like(images)
    for image, target, (dy, dx) in zip(images, out, shifts):
        target[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = \
            image[max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)]
    return out
