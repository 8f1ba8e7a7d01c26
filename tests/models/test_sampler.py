"""Bilinear sampler, affine grid and retina against independent numpy / scipy oracles.

Runs on whichever Keras backend the environment selects (KERAS_BACKEND).
"""

import keras
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from visatt_models.sampler import Retina, affine_grid, bilinear_sample, extract_glimpses


def oracle_sample(images, y, x):
    """scipy's linear interpolation, zero outside with blending at the border.

    scipy's mode="constant" returns cval for *any* point outside [0, n - 1] (no blend with the
    edge pixel); mode="grid-constant" interpolates against the zero padding, which is the
    sampler's contract (half a pixel outside = half the edge pixel).
    """
    b, c = images.shape[0], images.shape[-1]
    out = np.empty(y.shape + (c,), np.float64)
    for i in range(b):
        coords = np.stack([y[i].ravel(), x[i].ravel()]).astype(np.float64)
        for ch in range(c):
            out[i, ..., ch] = map_coordinates(
                images[i, :, :, ch].astype(np.float64), coords, order=1, mode="grid-constant", cval=0.0
            ).reshape(y.shape[1:])
    return out


def gradients(fn, *args):
    """d fn(*args) / d args for a scalar fn, on the active backend."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        args = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(args)
            value = fn(*args)
        return [np.asarray(g) for g in tape.gradient(value, args)]
    if keras.backend.backend() == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]
    pytest.skip(f"no gradient helper for backend {keras.backend.backend()}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- bilinear_sample ---------------------------------------------------------------------------


@pytest.mark.parametrize("height,width,channels", [(7, 11, 1), (12, 5, 3)])
def test_bilinear_matches_scipy_inside_and_outside(rng, height, width, channels):
    images = rng.random((3, height, width, channels)).astype(np.float32)
    y = rng.uniform(-2.5, height + 1.5, (3, 4, 6)).astype(np.float32)
    x = rng.uniform(-2.5, width + 1.5, (3, 4, 6)).astype(np.float32)
    out = np.asarray(bilinear_sample(images, y, x))
    assert out.shape == (3, 4, 6, channels)
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)
    assert outside.any() and (~outside).any()  # the draw covers both cases
    np.testing.assert_allclose(out, oracle_sample(images, y, x), atol=1e-6)


def test_bilinear_integer_coordinates_are_exact(rng):
    images = rng.random((2, 6, 9, 2)).astype(np.float32)
    y = rng.integers(-3, 9, (2, 50))
    x = rng.integers(-3, 12, (2, 50))
    out = np.asarray(bilinear_sample(images, y.astype(np.float32), x.astype(np.float32)))
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    expected = padded[np.arange(2)[:, None], y + 3, x + 3]
    np.testing.assert_array_equal(out, expected)


def test_bilinear_half_pixel_outside_is_half_the_edge():
    images = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)
    y = np.array([[-0.5, 2.5, 1.0, 1.0]], np.float32)
    x = np.array([[0.0, 3.0, -0.5, 3.5]], np.float32)
    out = np.asarray(bilinear_sample(images, y, x))[0, :, 0]
    np.testing.assert_allclose(out, [0.5 * 1, 0.5 * 12, 0.5 * 5, 0.5 * 8])


def test_bilinear_gradients_match_finite_differences(rng):
    images = rng.random((2, 5, 8, 1)).astype(np.float32)
    # Keep points away from integer coordinates, where the interpolant has kinks.
    y = (rng.integers(-1, 5, (2, 10)) + rng.uniform(0.2, 0.8, (2, 10))).astype(np.float32)
    x = (rng.integers(-1, 8, (2, 10)) + rng.uniform(0.2, 0.8, (2, 10))).astype(np.float32)
    weights = rng.normal(size=(2, 10, 1)).astype(np.float32)

    def loss(img, yy, xx):
        return keras.ops.sum(bilinear_sample(img, yy, xx) * weights)

    g_img, g_y, g_x = gradients(loss, images, y, x)
    assert np.all(np.isfinite(g_y)) and np.all(np.isfinite(g_x))
    assert np.abs(g_y).max() > 0 and np.abs(g_x).max() > 0 and np.abs(g_img).max() > 0

    def oracle_loss(yy, xx):
        return float(np.sum(oracle_sample(images, yy, xx) * weights))

    eps = 1e-3
    for grad, axis in ((g_y, 0), (g_x, 1)):
        for b, n in [(0, 0), (1, 3), (1, 9)]:
            plus = [y.astype(np.float64), x.astype(np.float64)]
            minus = [y.astype(np.float64), x.astype(np.float64)]
            plus[axis] = plus[axis].copy()
            minus[axis] = minus[axis].copy()
            plus[axis][b, n] += eps
            minus[axis][b, n] -= eps
            numeric = (oracle_loss(*plus) - oracle_loss(*minus)) / (2 * eps)
            np.testing.assert_allclose(grad[b, n], numeric, atol=1e-3)


# --- affine_grid --------------------------------------------------------------------------------

IDENTITY = np.array([[1, 0, 0], [0, 1, 0]], np.float32)


@pytest.mark.parametrize("height,width", [(28, 28), (13, 40), (1, 6)])
def test_identity_affine_reproduces_input_exactly(rng, height, width):
    images = rng.random((2, height, width, 3)).astype(np.float32)
    theta = np.stack([IDENTITY, IDENTITY])
    y, x = affine_grid(theta, height, width, height, width)
    assert tuple(y.shape) == (2, height, width) and tuple(x.shape) == (2, height, width)
    np.testing.assert_array_equal(np.asarray(bilinear_sample(images, y, x)), images)


def test_affine_grid_matches_normalised_formula(rng):
    theta = rng.normal(size=(2, 2, 3)).astype(np.float32)
    out_h, out_w, in_h, in_w = 4, 7, 9, 5
    y, x = affine_grid(theta, out_h, out_w, in_h, in_w)
    yt, xt = np.meshgrid(np.linspace(-1, 1, out_h), np.linspace(-1, 1, out_w), indexing="ij")
    target = np.stack([xt, yt, np.ones_like(xt)])  # (3, out_h, out_w), rows (x, y, 1)
    source = np.einsum("bij,jhw->bihw", theta.astype(np.float64), target)
    np.testing.assert_allclose(np.asarray(x), (source[:, 0] + 1) / 2 * (in_w - 1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), (source[:, 1] + 1) / 2 * (in_h - 1), atol=1e-5)


def test_affine_flip_and_downsample(rng):
    images = rng.random((1, 5, 9, 1)).astype(np.float32)
    flip = np.array([[[-1, 0, 0], [0, 1, 0]]], np.float32)
    y, x = affine_grid(flip, 5, 9, 5, 9)
    np.testing.assert_array_equal(np.asarray(bilinear_sample(images, y, x)), images[:, :, ::-1])
    # Identity onto a coarser grid reads every other pixel (corners aligned).
    y, x = affine_grid(IDENTITY[None], 3, 5, 5, 9)
    np.testing.assert_array_equal(np.asarray(bilinear_sample(images, y, x)), images[:, ::2, ::2])


# --- Retina -------------------------------------------------------------------------------------


def crop_and_average(image, centre_y, centre_x, g, num_scales):
    """Direct oracle for integer-aligned centres: crop each (g 2^k)-patch, average 2^k blocks."""
    pad = g * 2**num_scales
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    patches = []
    for k in range(num_scales):
        n = 2**k
        side = g * n
        top = centre_y - side / 2 + 0.5
        left = centre_x - side / 2 + 0.5
        assert top == int(top) and left == int(left), "oracle needs an integer-aligned centre"
        crop = padded[int(top) + pad : int(top) + pad + side, int(left) + pad : int(left) + pad + side]
        patches.append(crop.reshape(g, n, g, n, -1).mean(axis=(1, 3)))
    return np.stack(patches)  # (S, g, g, C)


def shifted_average(image, centre_y, centre_x, g, num_scales):
    """Oracle for any centre: bilinearly read every pixel of each patch, then block average."""
    patches = []
    for k in range(num_scales):
        n = 2**k
        side = g * n
        rows = centre_y - side / 2 + 0.5 + np.arange(side)
        cols = centre_x - side / 2 + 0.5 + np.arange(side)
        yy, xx = np.meshgrid(rows, cols, indexing="ij")
        crop = oracle_sample(image[None], yy[None], xx[None])[0]  # (side, side, C)
        patches.append(crop.reshape(g, n, g, n, -1).mean(axis=(1, 3)))
    return np.stack(patches)


def to_location(centre, size):
    """Inverse of the retina convention c = (l + 1) * size / 2 - 1/2."""
    return (centre + 0.5) * 2.0 / size - 1.0


@pytest.mark.parametrize(
    "height,width,g,num_scales",
    [(64, 32, 4, 3), (60, 44, 12, 3), (28, 28, 8, 1), (100, 100, 12, 4), (15, 20, 3, 1)],
)
def test_retina_matches_crop_and_average_at_aligned_locations(rng, height, width, g, num_scales):
    images = rng.random((4, height, width, 2)).astype(np.float32)
    # Aligned centres: half-integers for even g (odd g with one scale: integers). Drawn so that
    # some patches hang over the border.
    shift = 0.5 if g % 2 == 0 else 0.0
    centre_y = rng.integers(-g, height + g, 4) - shift
    centre_x = rng.integers(-g, width + g, 4) - shift
    centre_y[0], centre_x[0] = -shift, width - 1 + shift  # a corner
    l = np.stack([to_location(centre_y, height), to_location(centre_x, width)], axis=1)
    out = np.asarray(Retina(g, num_scales)(images, l.astype(np.float32)))
    assert out.shape == (4, num_scales, g, g, 2)
    expected = np.stack(
        [crop_and_average(images[b], centre_y[b], centre_x[b], g, num_scales) for b in range(4)]
    )
    assert np.abs(expected).max() > 0
    # Power-of-two sizes make l <-> centre exact in float32; otherwise allow a rounding blend.
    atol = 1e-6 if height in (64, 32) else 1e-4
    np.testing.assert_allclose(out, expected, atol=atol)


@pytest.mark.parametrize("height,width,g,num_scales", [(40, 30, 6, 3), (100, 100, 12, 4), (9, 13, 3, 2)])
def test_retina_matches_shifted_average_anywhere(rng, height, width, g, num_scales):
    images = rng.random((3, height, width, 1)).astype(np.float32)
    l = rng.uniform(-1.2, 1.2, (3, 2)).astype(np.float32)
    out = np.asarray(extract_glimpses(images, l, g, num_scales))
    centre_y = (l[:, 0].astype(np.float64) + 1) * height / 2 - 0.5
    centre_x = (l[:, 1].astype(np.float64) + 1) * width / 2 - 0.5
    expected = np.stack(
        [shifted_average(images[b], centre_y[b], centre_x[b], g, num_scales) for b in range(3)]
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_retina_location_convention():
    """(-1, -1) is the image's top-left corner: a 2x2 glimpse there sees pixel (0, 0) once."""
    image = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)
    corner = np.asarray(Retina(2, 1)(image, np.array([[-1.0, -1.0]], np.float32)))[0, 0, :, :, 0]
    np.testing.assert_array_equal(corner, [[0, 0], [0, 1]])
    far = np.asarray(Retina(2, 1)(image, np.array([[1.0, 1.0]], np.float32)))[0, 0, :, :, 0]
    np.testing.assert_array_equal(far, [[12, 0], [0, 0]])
    # The centre of a 3x4 image: rows 0.5..1.5 (blend), columns 1..2 (aligned).
    centre = np.asarray(Retina(2, 1)(image, np.zeros((1, 2), np.float32)))[0, 0, :, :, 0]
    np.testing.assert_allclose(centre, [[4, 5], [8, 9]])
    # Far outside: zero, never noise.
    outside = np.asarray(Retina(2, 3)(image, np.array([[5.0, -5.0]], np.float32)))
    np.testing.assert_array_equal(outside, 0)


def test_retina_weights_are_exact_box_averages_when_aligned():
    retina = Retina(3, 3)
    a = np.asarray(retina.weights(np.array([9.5], np.float32), 20))[0]  # (S g, 20)
    assert a.shape == (9, 20)
    np.testing.assert_array_equal(a.sum(axis=1), 1.0)  # every block inside: weights sum to 1
    np.testing.assert_array_equal(a[3 + 1], np.isin(np.arange(20), [9, 10]) / 2.0)  # scale 1, middle block
    np.testing.assert_array_equal(a[6 + 0], np.isin(np.arange(20), [4, 5, 6, 7]) / 4.0)  # scale 2, first block


def test_retina_gradients_reach_images_and_locations(rng):
    images = rng.random((2, 16, 12, 1)).astype(np.float32)
    l = rng.uniform(-0.9, 0.9, (2, 2)).astype(np.float32)
    weights = rng.normal(size=(2, 2, 4, 4, 1)).astype(np.float32)

    def loss(img, loc):
        return keras.ops.sum(Retina(4, 2)(img, loc) * weights)

    g_img, g_l = gradients(loss, images, l)
    assert np.all(np.isfinite(g_l)) and np.abs(g_l).min() > 0
    assert np.abs(g_img).max() > 0

