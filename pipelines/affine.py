"""Rotating and shearing images about their centre: the loader's `rotate`/`shear` augmentation
(`pipelines.batches`). Keras-free, so that the trainer's config can check the values without
loading Keras."""

from __future__ import annotations

import numbers

import numpy as np
from PIL import Image

MAX_ROTATE = 30.0  # degrees: beyond, a 6 and a 9 draw near
MAX_SHEAR = 0.5


def check_affine(rotate=0.0, shear=0.0) -> tuple[float, float]:
    """(rotate, shear) as floats in 0..MAX_ROTATE degrees and 0..MAX_SHEAR."""
    for name, value, top in (("rotate", rotate, MAX_ROTATE), ("shear", shear, MAX_SHEAR)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= top:
            raise ValueError(f"{name} must be a number in 0..{top:g}, got {value!r}")
    return float(rotate), float(shear)


def affine_images(images: np.ndarray, degrees: np.ndarray, shears: np.ndarray) -> np.ndarray:
    """Images (B, H, W, C) uint8 (C = 1 or 3) sheared horizontally (x += k * y) by `shears` (B,)
    and then rotated by `degrees` (B,) (counter-clockwise as seen), both about the image centre,
    resampled bilinearly, 0 where the source lies outside. Pillow's 8-bit bilinear truncates, so
    interpolated pixels come out ~0.5 grey level darker on average (a turn of 0 changes nothing)."""
    height, width, channels = images.shape[1:]
    cx, cy = width / 2, height / 2  # Pillow samples pixel centres at (x + 0.5, y + 0.5)
    out = np.empty_like(images)
    for image, target, angle, k in zip(images, out, np.radians(degrees), shears):
        # Output -> source, as Pillow's AFFINE takes it: the inverse of R(angle) @ [[1, k], [0, 1]]
        # with y down, so that a positive angle turns counter-clockwise on screen.
        c, s = np.cos(angle), np.sin(angle)
        a, b, d, e = c - k * s, -s - k * c, s, c  # [[1, -k], [0, 1]] @ [[c, -s], [s, c]], the turn undone
        matrix = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
        source = Image.fromarray(image[..., 0] if channels == 1 else image)
        turned = np.asarray(source.transform((width, height), Image.Transform.AFFINE, matrix,
                                             resample=Image.Resampling.BILINEAR))
        target[...] = turned.reshape(height, width, channels)
    return out
