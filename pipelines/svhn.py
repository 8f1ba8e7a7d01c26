"""SVHN format 1 (Netzer et al. 2011): archives, the `digitStruct.mat` reader and the `svhn` datasets.

Each split (`train`, `test`, `extra`) is a folder of PNGs and a `digitStruct.mat`, a MATLAB v7.3
file (HDF5 behind a 512-byte header): `digitStruct/name` and `digitStruct/bbox` are (N, 1)
columns of object references; each bbox is a group whose fields `label, top, left, height,
width` are either a 1x1 value (one digit) or a (k, 1) column of references to 1x1 values
(k digits). SVHN labels the digit 0 as 10; the reader maps it to 0 so that 10 is free for the
blank class that pads label sequences.

Preprocessing of one image (the seed article; Goodfellow et al. 2013 with `expand=0.3`, `size=64`):
1. the union of the digit boxes, grown by `expand` of its height and width, half on each side
   (centred), rounded outward to whole pixels and clamped to the image;
2. crop, convert to grayscale with PIL's "L" mode, ITU-R 601-2 luma
   L = R * 299/1000 + G * 587/1000 + B * 114/1000 (or keep RGB with `color=True`);
3. resize to `size` x `size` with PIL's filter `resample` (default bilinear, as
   `scipy.misc.imresize` used by most public SVHN scripts);
4. labels padded with BLANK (10) to MAX_LENGTH (5); digit boxes mapped into output pixels.
Numbers with more than MAX_LENGTH digits are dropped and counted.

`val` and `test` are cropped around the boxes too when `eval_crop=True` (the seed article's
choice, which leaks the labels' geometry into evaluation); with `eval_crop=False` their whole
image is resized instead. The store records which.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipelines.archive import ArchiveError, Expected, download, extract_tar, new_folders, verify_file
from pipelines.canvas import named_rng
from pipelines.sources import visatt_home

if TYPE_CHECKING:
    import h5py

MAX_LENGTH = 5
BLANK = 10
SPLITS = ("train", "test", "extra")
FIELDS = ("label", "top", "left", "height", "width")

# The official archives (http://ufldl.stanford.edu/housenumbers/): sizes and md5s as published.
# Their sha256 is not published; `fetch` records the one it computes next to the extracted folder.
SVHN_ARCHIVES = {
    "train": Expected(size=404141560, md5="a649f4cb15c35520e8a8c342d4c0005a"),
    "test": Expected(size=276555967, md5="790d9c8d42f1fcbd219b59956c853a81"),
    "extra": Expected(size=1955489752, md5="606f41243d71ca4d5fe66dbaf1f02bee"),
}
SVHN_MIRRORS = ("http://ufldl.stanford.edu/housenumbers/",)

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class SvhnError(Exception):
    """A SVHN source that is missing, malformed or unreadable (one-line message)."""


# ---------------------------------------------------------------- digitStruct.mat


@dataclasses.dataclass(frozen=True, eq=False)
class DigitStruct:
    """The entries of one `digitStruct.mat`, flattened: entry i owns digits offsets[i]:offsets[i+1]."""

    path: Path
    names: tuple[str, ...]  # (N,) image file names, e.g. "1.png"
    lengths: np.ndarray  # (N,) int64 digits per entry
    labels: np.ndarray  # (D,) uint8 digits 0..9 (SVHN's 10 already mapped to 0), D = lengths.sum()
    boxes: np.ndarray  # (D, 4) float64 top, left, height, width in source pixels

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])  # (N + 1,)

    def __len__(self) -> int:
        return len(self.names)

    def entry(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(name, labels (k,), boxes (k, 4)) of entry i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.names[i], self.labels[a:b], self.boxes[a:b]


def _read(dataset_id: h5py.h5d.DatasetID) -> np.ndarray:
    import h5py  # here, not at the top: 70 ms of every command line start that never reads SVHN

    out = np.empty(dataset_id.shape, dataset_id.dtype)
    dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _values(file_id, bbox_id, field: bytes) -> list[float]:
    """A bbox field: a 1x1 value, or a (k, 1) column of references to 1x1 values."""
    import h5py

    data = _read(h5py.h5d.open(bbox_id, field))
    if h5py.check_ref_dtype(data.dtype) is None:
        return [float(v) for v in data.ravel()]
    return [float(_read(h5py.h5r.dereference(ref, file_id)).item()) for ref in data.ravel()]


def index_cache_path(checksum: str) -> Path:
    return visatt_home() / "cache" / "digitstruct" / f"{checksum}.npz"


def read_digit_struct(path: Path, *, limit: int | None = None) -> DigitStruct:
    """Read the first `limit` (default all) entries of a format-1 `digitStruct.mat`.

    The parsed index of a whole file is cached under `$VISATT_HOME/cache/digitstruct/`, keyed by
    the file's sha256, so a file is parsed once per machine (extra's 202,353 entries take
    minutes), not once per build or per distributed worker; a changed file has another key.
    """
    path = Path(path)
    if not path.is_file():
        raise SvhnError(f"{path}: file not found")
    cache = index_cache_path(_sha256_file(path))
    try:
        with np.load(cache, allow_pickle=False) as z:
            n = len(z["lengths"]) if limit is None else min(limit, len(z["lengths"]))
            lengths = z["lengths"][:n]
            d = int(lengths.sum())
            return DigitStruct(path, tuple(str(v) for v in z["names"][:n]), lengths, z["labels"][:d], z["boxes"][:d])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # not cached yet (or an unreadable cache file): parse
    ds = _parse_digit_struct(path, limit)
    if limit is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.npz")
        np.savez(tmp, names=np.asarray(ds.names, dtype=str), lengths=ds.lengths, labels=ds.labels, boxes=ds.boxes)
        os.replace(tmp, cache)
    return ds


def _parse_digit_struct(path: Path, limit: int | None) -> DigitStruct:
    """Parse the file with h5py's low-level API: dereferencing through the high-level one costs
    ~3x more, which is seconds on SVHN's 33,402 train entries."""
    import h5py

    names, lengths, labels, boxes = [], [], [], []
    fields = tuple(k.encode() for k in FIELDS)
    try:
        with h5py.File(path, "r") as f:
            name_refs = f["digitStruct/name"][()].ravel()
            bbox_refs = f["digitStruct/bbox"][()].ravel()
            if len(name_refs) != len(bbox_refs):
                raise SvhnError(f"{path}: {len(name_refs)} names but {len(bbox_refs)} bboxes")
            n = len(name_refs) if limit is None else min(limit, len(name_refs))
            for i in range(n):
                name = "".join(map(chr, _read(h5py.h5r.dereference(name_refs[i], f.id)).ravel()))
                bbox_id = h5py.h5r.dereference(bbox_refs[i], f.id)
                label, top, left, height, width = (_values(f.id, bbox_id, k) for k in fields)
                k = len(label)
                if k == 0 or any(len(v) != k for v in (top, left, height, width)):
                    raise SvhnError(f"{path}: entry {i + 1} ({name}): bbox fields disagree in length")
                if not all(v in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) for v in label):
                    raise SvhnError(f"{path}: entry {i + 1} ({name}): labels {label} outside 1..10")
                names.append(name)
                lengths.append(k)
                labels.extend(int(v) % 10 for v in label)  # SVHN's 10 is the digit 0
                boxes.extend(zip(top, left, height, width))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise SvhnError(f"{path}: not a readable format-1 digitStruct.mat ({type(e).__name__}: {e})") from None
    return DigitStruct(
        path,
        tuple(names),
        np.asarray(lengths, np.int64),
        np.asarray(labels, np.uint8),
        np.asarray(boxes, np.float64).reshape(-1, 4),
    )


def check_images(folder: Path, names) -> None:
    """Raise SvhnError naming the first listed image that is missing or not readable."""
    for name in names:
        path = Path(folder) / name
        if not path.is_file():
            raise SvhnError(f"{path}: image listed in digitStruct.mat is missing")
        if not os.access(path, os.R_OK):
            raise SvhnError(f"{path}: image listed in digitStruct.mat is not readable")


def read_split(folder: Path, *, limit: int | None = None) -> DigitStruct:
    """Read a split folder's `digitStruct.mat` (first `limit` entries) and check their images exist."""
    folder = Path(folder)
    ds = read_digit_struct(folder / "digitStruct.mat", limit=limit)
    check_images(folder, ds.names)
    return ds


# ---------------------------------------------------------------- one image


def crop_box(boxes: np.ndarray, expand: float, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the union of `boxes` (k, 4), grown by `expand`, clamped.

    The union's height h grows by expand * h, half above and half below (the same for the width):
    Goodfellow et al.'s "expand by 30% in x and y", centred. Rounded outward to whole pixels.
    """
    top, left = boxes[:, 0].min(), boxes[:, 1].min()
    bottom, right = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
    dy, dx = expand * (bottom - top) / 2, expand * (right - left) / 2
    t, b = max(0, int(np.floor(top - dy))), min(height, int(np.ceil(bottom + dy)))
    l, r = max(0, int(np.floor(left - dx))), min(width, int(np.ceil(right + dx)))
    return t, l, b, r


def map_boxes(boxes: np.ndarray, crop: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Digit boxes (k, 4) in source pixels -> (k, 4) int32 in the `size` x `size` output.

    Box corners are scaled like the crop (PIL maps pixel edges linearly), rounded to the nearest
    pixel (half to even) and clipped to the output.
    """
    t, l, b, r = crop
    sy, sx = size / (b - t), size / (r - l)
    y0 = np.clip(np.rint((boxes[:, 0] - t) * sy), 0, size)
    x0 = np.clip(np.rint((boxes[:, 1] - l) * sx), 0, size)
    y1 = np.clip(np.rint((boxes[:, 0] + boxes[:, 2] - t) * sy), 0, size)
    x1 = np.clip(np.rint((boxes[:, 1] + boxes[:, 3] - l) * sx), 0, size)
    return np.stack([y0, x0, y1 - y0, x1 - x0], axis=1).astype(np.int32)


def preprocess_image(
    path: Path, boxes: np.ndarray, *, size: int, expand: float, color: bool, resample: str, crop: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image and return (image (size, size, C) uint8, boxes (k, 4) int32 in output pixels).

    `crop=False` resizes the whole image (no use of the boxes).
    """
    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
            box = crop_box(boxes, expand, h, w) if crop else (0, 0, h, w)
            t, l, b, r = box
            if b <= t or r <= l:
                raise SvhnError(f"{path}: digit boxes lie outside the {w}x{h} image")
            out = im.crop((l, t, r, b)).convert("RGB" if color else "L")
            out = out.resize((size, size), resample=RESAMPLE[resample])
            pixels = np.asarray(out, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for missing or corrupt files
        raise SvhnError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return pixels.reshape(size, size, 3 if color else 1), map_boxes(boxes, box, size)


# ---------------------------------------------------------------- recipe and splits


@dataclasses.dataclass(frozen=True)
class SvhnRecipe:
    """Everything that decides the bytes of an `svhn` store."""

    size: int = 32  # output side S (seed article 32; Goodfellow 64)
    expand: float = 0.0  # growth of the union box in x and y, centred (Goodfellow 0.3)
    color: bool = False  # keep RGB (C = 3) instead of grayscale (C = 1)
    eval_crop: bool = True  # crop val/test around their boxes too (seed article; leaks geometry)
    resample: str = "bilinear"  # PIL filter, a key of RESAMPLE
    val_fraction: float = 0.1  # share of the train entries carved out (seeded) for `val`
    extra: bool = False  # fold `extra` into `train`
    seed: int = 0
    limit: int | None = None  # read only the first N entries of each source split (not frozen)
    source: str = "svhn"
    generator: int = 1  # bumped whenever the preprocessing code changes the bytes

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size {self.size} must be positive")
        if not (math.isfinite(self.expand) and self.expand >= 0):
            raise ValueError(f"expand {self.expand} must be a finite number >= 0")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample {self.resample!r} is not one of {', '.join(RESAMPLE)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val fraction {self.val_fraction} must be in [0, 1)")
        if self.seed < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError("seed must be non-negative and limit positive")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: cached per process
class SvhnSource:
    """The split folders read for a build: source split name -> its digitStruct entries."""

    root: Path
    splits: dict  # "train" / "test" / "extra" -> DigitStruct

    @functools.cached_property
    def checksums(self) -> dict:
        """sha256 of every file read: `<split>/digitStruct.mat`, and `<split>/images` =
        sha256 over (name, sha256 of the file) of the listed images, in listed order."""
        out = {}
        for split, ds in sorted(self.splits.items()):
            out[f"{split}/digitStruct.mat"] = _sha256_file(ds.path)
            folder = ds.path.parent
            with concurrent.futures.ThreadPoolExecutor(4) as pool:  # hashlib releases the GIL
                digests = list(pool.map(lambda n: _sha256_file(folder / n), ds.names))
            h = hashlib.sha256()
            for name, digest in zip(ds.names, digests):
                h.update(f"{name}\0{digest}\n".encode())
            out[f"{split}/images"] = h.hexdigest()
            record = folder.parent / f"{split}.tar.gz.json"
            if record.is_file():  # written by fetch: the checksums of the archive it came from
                out[f"{split}.tar.gz"] = json.loads(record.read_text())["sha256"]
        return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def load_svhn(root: str, splits: tuple[str, ...] = ("train", "test"), limit: int | None = None) -> SvhnSource:
    """Read `root/<split>/digitStruct.mat` for each split and check the listed images exist.

    Cached per process so each dask worker reads the `.mat` files once.
    """
    base = Path(root)
    out = {}
    for split in splits:
        folder = base / split
        if not (folder / "digitStruct.mat").is_file():
            raise SvhnError(
                f"{folder}: no digitStruct.mat; run `visatt-data fetch svhn` "
                f"(or `fetch svhn --from DIR` with the archives or extracted folders)"
            )
        out[split] = read_split(folder, limit=limit)
    return SvhnSource(base, out)


_VAL_CARVE = 1001  # spawn key of the train/val carve (sample keys use split codes 0..3)


def split_pools(recipe: SvhnRecipe, source: SvhnSource) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The entries of each output split as [(source split, entry indices)], in sample order.

    Numbers longer than MAX_LENGTH are dropped first. `val` is a seeded carve of
    round(val_fraction * n) of the kept train entries; `extra` (when asked) follows `train`.
    """
    kept = {name: np.flatnonzero(ds.lengths <= MAX_LENGTH) for name, ds in source.splits.items()}
    train = kept["train"]
    n_val = int(np.floor(recipe.val_fraction * len(train) + 0.5))
    order = named_rng(recipe.seed, _VAL_CARVE).permutation(len(train))
    val_idx, train_idx = np.sort(train[order[:n_val]]), np.sort(train[order[n_val:]])
    pools = {"train": [("train", train_idx)], "val": [("train", val_idx)], "test": [("test", kept["test"])]}
    if recipe.extra:
        pools["train"].append(("extra", kept["extra"]))
    return pools


def dropped_counts(source: SvhnSource) -> dict[str, int]:
    """Entries of each source split dropped for having more than MAX_LENGTH digits."""
    return {name: int((ds.lengths > MAX_LENGTH).sum()) for name, ds in source.splits.items()}


def _pool_slice(pool, start: int, stop: int) -> list[tuple[str, int]]:
    out, offset = [], 0
    for name, indices in pool:
        a, b = max(start - offset, 0), min(stop - offset, len(indices))
        out.extend((name, int(i)) for i in indices[a:b])
        offset += len(indices)
    return out


def generate(
    recipe: SvhnRecipe, source: SvhnSource, split: str, start: int, stop: int, *, workers: int = 1
) -> dict[str, np.ndarray]:
    """Samples [start, stop) of `split`: images (B, S, S, C) uint8, labels (B, 5) uint8 padded
    with 10, lengths (B,) uint8, boxes (B, 5, 4) int32 (top, left, height, width; padded with 0).

    `workers` > 1 decodes the images with that many threads (PIL releases the GIL while decoding).
    """
    items = _pool_slice(split_pools(recipe, source)[split], start, stop)
    crop = split == "train" or recipe.eval_crop
    b, s, c = len(items), recipe.size, 3 if recipe.color else 1
    images = np.empty((b, s, s, c), np.uint8)  # (B, S, S, C)
    labels = np.full((b, MAX_LENGTH), BLANK, np.uint8)  # (B, 5)
    lengths = np.empty(b, np.uint8)  # (B,)
    boxes = np.zeros((b, MAX_LENGTH, 4), np.int32)  # (B, 5, 4)

    def one(row: int) -> None:
        name, i = items[row]
        ds = source.splits[name]
        file, digits, digit_boxes = ds.entry(i)
        images[row], boxes[row, : len(digits)] = preprocess_image(
            ds.path.parent / file, digit_boxes, size=s, expand=recipe.expand, color=recipe.color,
            resample=recipe.resample, crop=crop,
        )
        labels[row, : len(digits)] = digits
        lengths[row] = len(digits)

    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(b)))
    else:
        for row in range(b):
            one(row)
    return {"images": images, "labels": labels, "lengths": lengths, "boxes": boxes}


# ---------------------------------------------------------------- fetching


def svhn_cache_dir() -> Path:
    return visatt_home() / "sources" / "svhn"


def _archive_root_strip(archive: Path) -> int:
    """1 if the archive's members live under a top folder (`train/1.png`, as the official ones), else 0."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e})") from None
    if first is None:
        raise ArchiveError(f"{archive}: empty archive")
    return 1 if "/" in first.name.strip("/") or first.isdir() else 0


def install_archive(
    archive: Path, dest_dir: Path, split: str, *, expected: Expected | None = None, overwrite: bool = False, log=print
) -> Path:
    """Verify an archive (default: the official size and md5 of `split`), extract it safely to
    `dest_dir/split`, check its digitStruct.mat and images, and record the archive's checksums."""
    archive = Path(archive)
    got = verify_file(archive, expected or SVHN_ARCHIVES[split])
    folder = extract_tar(archive, Path(dest_dir) / split, strip_components=_archive_root_strip(archive),
                         overwrite=overwrite)
    (Path(dest_dir) / f"{split}.tar.gz.json").write_text(json.dumps(got, sort_keys=True) + "\n")
    ds = read_split(folder)
    log(f"{split}: {archive.name} verified (md5 {got['md5']}), {len(ds)} images in {folder}")
    return folder


def import_folder(src: Path, dest_dir: Path, split: str, *, log=print) -> Path:
    """Check an extracted split folder (digitStruct.mat readable, every image present) and copy it in."""
    src = Path(src)
    ds = read_split(src)
    target = Path(dest_dir) / split
    if target.resolve() == src.resolve():
        log(f"{split}: {len(ds)} images already in {target}")
        return target
    partial = target.with_name(f".{split}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(src, partial)
        if target.exists():
            shutil.rmtree(target)
        os.rename(partial, target)
        (Path(dest_dir) / f"{split}.tar.gz.json").unlink(missing_ok=True)  # no longer from that archive
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log(f"{split}: {len(ds)} images verified, copied to {target}")
    return target


def fetch_svhn(
    dest_dir: Path | None = None,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    from_dir: Path | None = None,
    mirrors: tuple[str, ...] = SVHN_MIRRORS,
    archives: dict[str, Expected] = SVHN_ARCHIVES,
    retries: int = 3,
    backoff: float = 1.0,
    log=print,
) -> dict[str, Path]:
    """Get each split into `dest_dir/<split>/` (default the cache), verified.

    With `from_dir`, each split is taken from `from_dir/<split>/` (an extracted folder) or
    `from_dir/<split>.tar.gz` (an official archive, md5 checked); otherwise the archives are
    downloaded (resumable) from `mirrors`. Archives are kept beside the extracted folders.
    """
    dest_dir = Path(dest_dir or svhn_cache_dir())
    with new_folders(dest_dir):
        return _fetch_splits(dest_dir, splits, from_dir, mirrors, archives, retries, backoff, log)


def _fetch_splits(dest_dir, splits, from_dir, mirrors, archives, retries, backoff, log) -> dict[str, Path]:
    out = {}
    for split in splits:
        if from_dir is not None:
            folder, archive = Path(from_dir) / split, Path(from_dir) / f"{split}.tar.gz"
            if (folder / "digitStruct.mat").is_file():
                out[split] = import_folder(folder, dest_dir, split, log=log)
            elif archive.is_file():
                out[split] = install_archive(archive, dest_dir, split, expected=archives[split], overwrite=True, log=log)
            else:
                raise SvhnError(f"{from_dir}: neither {split}/digitStruct.mat nor {split}.tar.gz found")
            continue
        archive = dest_dir / f"{split}.tar.gz"
        urls = [m.rstrip("/") + f"/{split}.tar.gz" for m in mirrors]
        download(urls, archive, archives[split], retries=retries, backoff=backoff, log=log,
                 hint="Copy the archives (or extracted folders) and use `visatt-data fetch svhn --from DIR`.")
        out[split] = install_archive(archive, dest_dir, split, expected=archives[split], overwrite=True, log=log)
    return out


# ---------------------------------------------------------------- the build machinery's interface


class SvhnFamily:
    """Builder of `svhn` stores; the build machinery calls these methods."""

    recipe_type = SvhnRecipe
    task = "sequence"
    max_length = MAX_LENGTH
    sources = ("svhn",)  # the format-1 split folders (cache, or `--from DIR`)
    gil_bound = True  # per-sample crops and resizes in Python: the command line uses processes

    def make_recipe(self, source: str, **options) -> SvhnRecipe:
        return SvhnRecipe(source=source, **options)

    def load_source(self, recipe: SvhnRecipe, source_dir: str | None = None) -> SvhnSource:
        splits = ("train", "test", "extra") if recipe.extra else ("train", "test")
        return load_svhn(str(source_dir or svhn_cache_dir()), splits, recipe.limit)

    def split_sizes(self, recipe: SvhnRecipe, source: SvhnSource) -> dict[str, int]:
        return {split: sum(len(i) for _, i in pool) for split, pool in split_pools(recipe, source).items()}

    def array_specs(self, recipe: SvhnRecipe) -> dict[str, tuple[tuple[int, ...], str]]:
        s = recipe.size
        return {
            "images": ((s, s, 3 if recipe.color else 1), "uint8"),
            "labels": ((MAX_LENGTH,), "uint8"),
            "lengths": ((), "uint8"),
            "boxes": ((MAX_LENGTH, 4), "int32"),
        }

    def generate(self, recipe: SvhnRecipe, source: SvhnSource, split: str, start: int, stop: int):
        return generate(recipe, source, split, start, stop)

    def store_attrs(self, recipe: SvhnRecipe, source: SvhnSource) -> dict:
        """Attributes beyond the common ones: what was dropped and how evaluation was cropped."""
        return {
            "max_length": MAX_LENGTH,
            "dropped_longer_than_5": dropped_counts(source),
            "eval_crop": (
                "val and test cropped around their digit boxes (seed article; leaks label geometry)"
                if recipe.eval_crop else "val and test: whole image resized (boxes not used)"
            ),
        }
