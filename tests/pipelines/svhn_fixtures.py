"""Synthetic SVHN format-1 trees: PNGs plus a `digitStruct.mat` in MATLAB v7.3 layout.

The `.mat` is written the way MATLAB writes it: an HDF5 file behind a 512-byte text header, the
strings and structs stored under `#refs#`, and `digitStruct/name`, `digitStruct/bbox` as (N, 1)
columns of object references. A bbox field is a 1x1 double for a one-digit number and a (k, 1)
column of references to 1x1 doubles otherwise, exactly the two encodings of the real files.
Labels are written the SVHN way: the digit 0 is stored as 10.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

FIELDS = ("label", "top", "left", "height", "width")
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: synthetic HDF5 schema 1.00 ."


def _names():
    for n in itertools.count():
        yield f"r{n}"


def write_digit_struct(path: Path, entries) -> None:
    """Write `entries` = [(file name, [(label 1..10, top, left, height, width), ...]), ...]."""
    names = _names()
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def scalar(value):
            ds = refs.create_dataset(next(names), data=np.array([[value]], np.float64))
            ds.attrs["MATLAB_class"] = np.bytes_("double")
            return ds.ref

        name_refs, bbox_refs = [], []
        for file, digits in entries:
            chars = refs.create_dataset(next(names), data=np.array([[ord(c)] for c in file], np.uint16))
            chars.attrs["MATLAB_class"] = np.bytes_("char")
            chars.attrs["MATLAB_int_decode"] = np.int32(2)
            name_refs.append(chars.ref)
            bbox = refs.create_group(next(names))
            bbox.attrs["MATLAB_class"] = np.bytes_("struct")
            for j, field in enumerate(FIELDS):
                values = [d[j] for d in digits]
                if len(values) == 1:  # one digit: the value itself, 1x1
                    bbox.create_dataset(field, data=np.array([[values[0]]], np.float64))
                else:  # several digits: a (k, 1) column of references to 1x1 values
                    column = np.array([[scalar(v)] for v in values], dtype=h5py.ref_dtype)
                    bbox.create_dataset(field, data=column)
            bbox_refs.append(bbox.ref)
        group = f.create_group("digitStruct")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        group.create_dataset("name", data=np.array(name_refs, dtype=h5py.ref_dtype).reshape(-1, 1))
        group.create_dataset("bbox", data=np.array(bbox_refs, dtype=h5py.ref_dtype).reshape(-1, 1))
    with open(path, "r+b") as f:  # MATLAB's text header in the HDF5 user block
        f.write(MATLAB_HEADER.ljust(116) + b"\0" * 8 + b"\x00\x02IM")


def gray_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 with R = G = B, so grayscale conversion is exact whatever the luma weights."""
    v = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


def write_split(folder: Path, entries, images: dict) -> None:
    """Write the PNGs (`images`: file name -> (H, W, 3) uint8) and the split's digitStruct.mat."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for file, pixels in images.items():
        Image.fromarray(pixels).save(folder / file, compress_level=1)
    write_digit_struct(folder / "digitStruct.mat", entries)


# The small tree the tests check by hand. Every union box is 20x20 (so a 20x20 output is an exact
# crop) and lies at least 3 pixels inside its 64x80 image (so 30% growth, 3 px a side, fits).
# (file, digits): label 10 is the digit 0.
SMALL_ENTRIES = [
    ("1.png", [(10, 10, 12, 20, 20)]),  # one digit, a zero; 1x1 encoding
    ("2.png", [(1, 30, 40, 20, 4), (10, 30, 44, 20, 4), (5, 31, 48, 19, 4), (7, 30, 52, 20, 4), (2, 30, 56, 20, 4)]),
    ("3.png", [(i % 10 + 1, 5, 5 + 4 * i, 20, 4) for i in range(6)]),  # six digits: dropped
    ("4.png", [(3, 20, 30, 12, 9), (9, 24, 40, 16, 10)]),  # union (20, 30) .. (40, 50)
    ("5.png", [(4, 40, 50, 20, 10), (6, 40, 60, 20, 10)]),
]
SMALL_SHAPE = (64, 80)  # H, W of every small image
# Expected labels after mapping 10 -> 0 and padding with 10; None for the dropped number.
SMALL_LABELS = {
    "1.png": [0, 10, 10, 10, 10],
    "2.png": [1, 0, 5, 7, 2],
    "3.png": None,
    "4.png": [3, 9, 10, 10, 10],
    "5.png": [4, 6, 10, 10, 10],
}


def write_small_tree(root: Path, seed: int = 0, splits=("train", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Write SMALL_ENTRIES as each split of `root`; return split -> file name -> pixels."""
    out = {}
    for k, split in enumerate(splits):
        rng = np.random.default_rng([seed, k])
        images = {file: gray_image(*SMALL_SHAPE, rng) for file, _ in SMALL_ENTRIES}
        write_split(Path(root) / split, SMALL_ENTRIES, images)
        out[split] = images
    return out


def realistic_entries(n: int, seed: int = 0):
    """`n` random entries with SVHN-like sizes: widths ~30-500 px (median ~100), aspect ~2:1,
    1-4 digits (mostly 2-3) of roughly the image's height. Returns (entries, shapes)."""
    rng = np.random.default_rng(seed)
    entries, shapes = [], []
    for i in range(n):
        w = int(np.clip(rng.lognormal(np.log(100), 0.55), 30, 500))
        h = int(np.clip(w * rng.uniform(0.35, 0.65), 15, 300))
        k = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.45, 0.3, 0.05]))
        dh = max(4, int(h * rng.uniform(0.5, 0.8)))
        dw = max(2, int(min(w / (k + 1), dh * rng.uniform(0.4, 0.7))))
        top = int(rng.integers(0, h - dh + 1))
        left = int(rng.integers(0, max(1, w - k * dw) + 1))
        digits = [(int(rng.integers(1, 11)), top + int(rng.integers(-2, 3)), left + j * dw, dh, dw) for j in range(k)]
        entries.append((f"{i + 1}.png", digits))
        shapes.append((h, w))
    return entries, shapes


def write_realistic_split(folder: Path, n: int, seed: int = 0) -> None:
    """A split of `n` colour PNGs with smooth backgrounds and noisy digits (PNG sizes like SVHN's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, shapes = realistic_entries(n, seed)
    rng = np.random.default_rng(seed + 1)
    for (file, digits), (h, w) in zip(entries, shapes):
        base = rng.integers(40, 200, size=3)
        ramp = np.linspace(0, 40, w, dtype=np.float32)[None, :, None]
        pixels = base[None, None, :] + ramp + rng.normal(0, 6, size=(h, w, 3))
        for _, top, left, dh, dw in digits:
            t, l = max(top, 0), max(left, 0)
            pixels[t : top + dh, l : left + dw] = 255 - pixels[t : top + dh, l : left + dw]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / file, compress_level=6)
    write_digit_struct(folder / "digitStruct.mat", entries)
