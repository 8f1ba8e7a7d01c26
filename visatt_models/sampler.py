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
    (area averaging). Out-of-image pixels are zero. Returns (B, S, g, g, C).

    Location convention: `l` is (B, 2) as `(l_y, l_x)` in [-1, 1]; -1 is the outer edge of the
    first row/column, +1 the outer edge of the last, so `(0, 0)` is the image centre and
    `(-1, -1)` its top-left corner (the paper's convention). Each axis is scaled by its own size:
    centre pixel coordinate `c_y = (l_y + 1) * H / 2 - 1/2`, `c_x = (l_x + 1) * W / 2 - 1/2`.
    Locations are continuous; a location is *integer-aligned* when every block covers whole
    pixels (for even g: `c` on pixel corners, e.g. `l = 0` on an even-sized image).

    Non-aligned locations: a block average is taken of the bilinearly interpolated image, which
    equals bilinearly sampling the 2^k box-filtered image at the block positions, i.e. it
    interpolates linearly between the neighbouring aligned glimpses.

    How: area averaging after bilinear interpolation is separable. Along one axis, block j of
    scale k (n = 2^k pixels, first pixel at the continuous position
    `p = c + (j - (g - 1) / 2) n - (n - 1) / 2`) gives pixel q the weight
    `f(q - p) / n`, `f(t) = clip(min(t + 1, n - t), 0, 1)` (a box of n pixels convolved with
    the bilinear hat: 0 or 1 at aligned positions, so aligned glimpses are exact). With these
    weights stacked into `A_y` (B, S g, H) and `A_x` (B, S g, W), the glimpses of scale k are
    `A_y,k @ image @ A_x,k^T`: two batched matmuls for all images and scales at once, no loop
    over the batch and no pre-filtered copies of the image. Pixels outside the image have no
    column in `A`, which is exactly zero padding. Differentiable w.r.t. `images` and `l`.
    """

    def __init__(self, patch_size: int, num_scales: int):
        if patch_size < 1 or num_scales < 1:
            raise ValueError(f"patch_size and num_scales must be >= 1, got {patch_size}, {num_scales}")
        self.patch_size = patch_size
        self.num_scales = num_scales
        g = patch_size
        blocks = 2.0 ** np.arange(num_scales)[:, None]  # (S, 1) block side n = 2^k
        j = np.arange(g)[None, :]  # (1, g)
        # First pixel of block j of scale k relative to the glimpse centre, and the block side.
        self._starts = ((j - (g - 1) / 2.0) * blocks - (blocks - 1) / 2.0).reshape(1, -1, 1)
        self._sides = np.broadcast_to(blocks, (num_scales, g)).reshape(1, -1, 1)  # (1, S g, 1)

    def weights(self, centre, size, dtype="float32"):
        """Area-averaging weights along one axis: centre (B,) pixel coordinate -> (B, S g, size)."""
        starts = ops.convert_to_tensor(self._starts, dtype=dtype)  # (1, S g, 1)
        sides = ops.convert_to_tensor(self._sides, dtype=dtype)  # (1, S g, 1)
        pixels = ops.reshape(ops.arange(size, dtype=dtype), (1, 1, size))  # (1, 1, size)
        t = pixels - ops.reshape(centre, (-1, 1, 1)) - starts  # (B, S g, size)
        return ops.clip(ops.minimum(t + 1.0, sides - t), 0.0, 1.0) / sides

    def __call__(self, images, l):
        """Glimpses of `images` (B, H, W, C) float at `l` (B, 2): returns (B, S, g, g, C)."""
        images = ops.convert_to_tensor(images)
        _, height, width, channels = ops.shape(images)
        s, g = self.num_scales, self.patch_size
        l = ops.cast(l, images.dtype)
        centre_y = (l[:, 0] + 1.0) * (height / 2.0) - 0.5  # (B,)
        centre_x = (l[:, 1] + 1.0) * (width / 2.0) - 0.5  # (B,)
        a_y = self.weights(centre_y, height, images.dtype)  # (B, S g, H)
        a_x = self.weights(centre_x, width, images.dtype)  # (B, S g, W)
        a_x = ops.transpose(ops.reshape(a_x, (-1, g, width)), (0, 2, 1))  # (B S, W, g)
        rows = ops.matmul(a_y, ops.reshape(images, (-1, height, width * channels)))  # (B, S g, W C)
        rows = ops.reshape(rows, (-1, g, width, channels))  # (B S, g, W, C)
        if channels == 1:
            out = ops.matmul(rows[..., 0], a_x)[..., None]  # (B S, g, g, 1)
        else:
            rows = ops.reshape(ops.transpose(rows, (0, 1, 3, 2)), (-1, g * channels, width))
            out = ops.matmul(rows, a_x)  # (B S, g C, g)
            out = ops.transpose(ops.reshape(out, (-1, g, channels, g)), (0, 1, 3, 2))
        return ops.reshape(out, (-1, s, g, g, channels))  # (B, S, g, g, C)


def extract_glimpses(images, l, patch_size, num_scales):
    """Functional form of `Retina`: (B, H, W, C), (B, 2) -> (B, num_scales, g, g, C)."""
    return Retina(patch_size, num_scales)(images, l)
