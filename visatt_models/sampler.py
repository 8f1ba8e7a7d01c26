"""Differentiable image sampling: bilinear sampler, affine grid and the RAM glimpse sensor.

Everything here is written with `keras.ops` only, so the same code runs (and is differentiated)
on the TensorFlow and the JAX backends.

Pixel coordinates throughout: `(y, x)` = (row, column), where `(0, 0)` is the *centre* of the
top-left pixel and `(H - 1, W - 1)` the centre of the bottom-right one. The image is the bilinear
interpolant of its pixels, extended by zeros outside: a point half a pixel outside the image gets
half the weight of the edge pixel, a point one pixel or more outside reads 0.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def bilinear_sample(images, y, x):
    """Bilinearly interpolates `images` at pixel coordinates `(y, x)`, zero outside.

    Args:
        images: (B, H, W, C) float tensor.
        y, x: (B, ...) row and column pixel coordinates, the same shape, any number of
            trailing point axes. Integer coordinates read pixels exactly.

    Returns:
        (B, ..., C) tensor, differentiable with respect to `images`, `y` and `x`.

    All points of all images are read with one gather on the flattened batch, so there is no
    loop over the batch (or over the points).
    """
    images = ops.convert_to_tensor(images)
    dtype = images.dtype
    y = ops.cast(y, dtype)
    x = ops.cast(x, dtype)
    batch, height, width, channels = ops.shape(images)
    points_shape = ops.shape(y)  # (B, ...)

    y = ops.reshape(y, (batch, -1))  # (B, N)
    x = ops.reshape(x, (batch, -1))  # (B, N)
    y0 = ops.floor(y)
    x0 = ops.floor(x)
    # Fractional parts carry the gradient w.r.t. the coordinates (floor has zero gradient).
    wy1 = y - y0  # (B, N)
    wx1 = x - x0
    wy0 = 1.0 - wy1
    wx0 = 1.0 - wx1
    y0 = ops.cast(y0, "int32")
    x0 = ops.cast(x0, "int32")

    # The four neighbours of every point, stacked on a trailing axis of size 4.
    ys = ops.stack([y0, y0, y0 + 1, y0 + 1], axis=-1)  # (B, N, 4)
    xs = ops.stack([x0, x0 + 1, x0, x0 + 1], axis=-1)  # (B, N, 4)
    weights = ops.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], axis=-1)  # (B, N, 4)
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    weights = ops.where(inside, weights, ops.zeros_like(weights))

    # Out-of-image neighbours read a clipped (valid) pixel and get zero weight.
    ys = ops.clip(ys, 0, height - 1)
    xs = ops.clip(xs, 0, width - 1)
    offsets = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    flat_index = offsets + ys * width + xs  # (B, N, 4)
    flat_images = ops.reshape(images, (-1, channels))  # (B * H * W, C)
    values = ops.take(flat_images, flat_index, axis=0)  # (B, N, 4, C)
    out = ops.sum(values * weights[..., None], axis=2)  # (B, N, C)
    return ops.reshape(out, tuple(points_shape) + (channels,))


def affine_grid(theta, out_h, out_w, in_h, in_w):
    """Source pixel coordinates of an affine transform (Jaderberg et al. 2015, eq. 1).

    `theta` maps normalised target coordinates to normalised source coordinates,
    `(x_s, y_s)^T = theta @ (x_t, y_t, 1)^T` (first row gives x, second y, as in the paper and
    PyTorch's `affine_grid`). Normalised coordinates follow the align_corners=True convention:
    -1 and 1 are the centres of the first and last pixels along each axis, on both the output
    grid and the input image (a 1-pixel axis sits at 0).

    Args:
        theta: (B, 2, 3) affine parameters.
        out_h, out_w: size of the output grid (Python ints).
        in_h, in_w: size of the input image the grid points into (Python ints).

    Returns:
        `(y, x)`, each (B, out_h, out_w), in input pixel coordinates, ready for
        `bilinear_sample`. The identity theta with out size == in size gives exactly the integer
        pixel grid, so it reproduces the input exactly.
    """
    theta = ops.convert_to_tensor(theta)
    dtype = keras.backend.standardize_dtype(theta.dtype)
    if not keras.backend.is_float_dtype(dtype):
        dtype = "float32"
    theta = ops.cast(theta, dtype)

    # Target normalised coordinate of output index i: u * i + v (u = 2 / (n - 1), v = -1).
    def axis_steps(n):
        return (2.0 / (n - 1), -1.0) if n > 1 else (0.0, 0.0)

    uy, vy = axis_steps(out_h)
    ux, vx = axis_steps(out_w)
    rows = ops.reshape(ops.arange(out_h, dtype=dtype), (1, out_h, 1))  # (1, out_h, 1)
    cols = ops.reshape(ops.arange(out_w, dtype=dtype), (1, 1, out_w))  # (1, 1, out_w)

    def source_pixels(a_x, a_y, shift, in_n):
        # Source pixel = (in_n - 1) / 2 * (a_x * x_t + a_y * y_t + shift + 1), expanded so that
        # the coefficients of the output indices are Python-float ratios (exactly 1.0 for the
        # identity at equal sizes) and the constant term is exactly 0 for the identity.
        half = (in_n - 1) / 2.0
        a_x = ops.reshape(a_x, (-1, 1, 1))
        a_y = ops.reshape(a_y, (-1, 1, 1))
        shift = ops.reshape(shift, (-1, 1, 1))
        constant = half * (shift + 1.0 + a_x * vx + a_y * vy)
        return (a_x * (half * ux)) * cols + (a_y * (half * uy)) * rows + constant

    x = source_pixels(theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2], in_w)  # (B, out_h, out_w)
    y = source_pixels(theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2], in_h)  # (B, out_h, out_w)
    return y, x


class Retina:
    """The glimpse sensor rho(x, l) of Mnih et al. 2014 (Sec. 3.1, Fig. 1A).

    At location `l` it extracts `num_scales` square patches centred on `l`, of sides
    g, 2g, 4g, ... (g = `patch_size`), and reduces patch k to g x g by averaging 2^k x 2^k blocks
    (area averaging). Out-of-image pixels are zero.

    Location convention: `l` is (B, 2) as `(l_y, l_x)` in [-1, 1]; -1 is the outer edge of the
    first row/column, +1 the outer edge of the last, so `(0, 0)` is the image centre and
    `(-1, -1)` its top-left corner (the paper's convention). Each axis is scaled by its own size:
    centre pixel coordinate `c_y = (l_y + 1) * H / 2 - 1/2`, `c_x = (l_x + 1) * W / 2 - 1/2`.
    Locations are continuous; a location is *integer-aligned* when every block covers whole
    pixels (for even g: `c` on pixel corners, e.g. `l = 0` on an even-sized image).

    How: block averages of scale k are the image box-filtered by a 2^k x 2^k mean filter (zero
    padded), read at the block positions. `pyramid()` builds all box-filtered copies once per
    batch; `sample()` then reads each glimpse with S * g * g bilinear samples. This is exact at
    integer-aligned locations; elsewhere it is the bilinear interpolation of the neighbouring
    integer-aligned glimpses (equivalently: the block averages of the bilinearly shifted image).
    """

    def __init__(self, patch_size: int, num_scales: int):
        if patch_size < 1 or num_scales < 1:
            raise ValueError(f"patch_size and num_scales must be >= 1, got {patch_size}, {num_scales}")
        self.patch_size = patch_size
        self.num_scales = num_scales
        # Zero margin that holds the support of the widest box filter (2^(S-1) - 1 pixels).
        self.margin = 2 ** (num_scales - 1) - 1
        g = patch_size
        blocks = 2.0 ** np.arange(num_scales)[:, None]  # (S, 1) block side 2^k
        j = np.arange(g)[None, :]  # (1, g)
        # Array coordinate (in the padded pyramid level) of the first pixel of block j of scale k,
        # relative to the glimpse centre: centre offset of the block minus half the block width.
        self._offsets = (self.margin + (j - (g - 1) / 2.0) * blocks - (blocks - 1) / 2.0).astype(
            np.float32
        )  # (S, g)

    def pyramid(self, images):
        """Box-filtered copies of `images`, one per scale.

        Args:
            images: (B, H, W, C) float.

        Returns:
            (B * S, H + 2m, W + 2m, C), m = 2^(S-1) - 1, batch-major (image b, scale k at row
            b * S + k). Level k at array index p + m holds the mean of the 2^k x 2^k block whose
            top-left pixel is p (zero padded).
        """
        images = ops.convert_to_tensor(images)
        m = self.margin
        level = ops.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))  # (B, H+2m, W+2m, C)
        size_h, size_w = ops.shape(level)[1], ops.shape(level)[2]
        levels = [level]
        for k in range(1, self.num_scales):
            n = 2 ** (k - 1)  # block side of the previous level; each level halves twice
            level = 0.5 * (level[:, :-n] + level[:, n:])
            level = 0.5 * (level[:, :, :-n] + level[:, :, n:])
            # Pad back to a common size; the box filter's support ends inside the margin.
            shrink = 2 ** k - 1
            levels.append(ops.pad(level, ((0, 0), (0, shrink), (0, shrink), (0, 0))))
        stacked = ops.stack(levels, axis=1)  # (B, S, H+2m, W+2m, C)
        channels = ops.shape(images)[3]
        return ops.reshape(stacked, (-1, size_h, size_w, channels))  # (B * S, H+2m, W+2m, C)

    def sample(self, pyramid, l, image_shape):
        """Reads the glimpses at `l` from a `pyramid()`.

        Args:
            pyramid: (B * S, H + 2m, W + 2m, C) from `pyramid()`.
            l: (B, 2) locations `(l_y, l_x)` in [-1, 1] (see the class docstring).
            image_shape: `(H, W)` of the original images.

        Returns:
            (B, S, g, g, C) glimpses.
        """
        height, width = image_shape
        l = ops.cast(l, pyramid.dtype)
        centre_y = (l[:, 0] + 1.0) * (height / 2.0) - 0.5  # (B,)
        centre_x = (l[:, 1] + 1.0) * (width / 2.0) - 0.5  # (B,)
        offsets = ops.convert_to_tensor(self._offsets, dtype=pyramid.dtype)  # (S, g)
        s, g = self.num_scales, self.patch_size
        zeros = ops.zeros((1, s, g, g), dtype=pyramid.dtype)
        rows = ops.reshape(centre_y, (-1, 1, 1, 1)) + ops.reshape(offsets, (1, s, g, 1)) + zeros
        cols = ops.reshape(centre_x, (-1, 1, 1, 1)) + ops.reshape(offsets, (1, s, 1, g)) + zeros
        rows = ops.reshape(rows, (-1, g, g))  # (B * S, g, g)
        cols = ops.reshape(cols, (-1, g, g))  # (B * S, g, g)
        patches = bilinear_sample(pyramid, rows, cols)  # (B * S, g, g, C)
        return ops.reshape(patches, (-1, s, g, g, ops.shape(pyramid)[3]))  # (B, S, g, g, C)

    def __call__(self, images, l):
        """Glimpses of `images` (B, H, W, C) at `l` (B, 2): returns (B, S, g, g, C)."""
        images = ops.convert_to_tensor(images)
        return self.sample(self.pyramid(images), l, tuple(ops.shape(images)[1:3]))


def extract_glimpses(images, l, patch_size, num_scales):
    """Functional form of `Retina`: (B, H, W, C), (B, 2) -> (B, num_scales, g, g, C)."""
    return Retina(patch_size, num_scales)(images, l)
