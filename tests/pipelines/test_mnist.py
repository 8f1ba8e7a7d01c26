"""Properties of translated and cluttered MNIST canvases, on real digits."""

import numpy as np
import pytest

from pipelines import sources
from pipelines.canvas import paste, sample_rng
from pipelines.mnist import DIGIT, MnistCanvasFamily, MnistCanvasRecipe, generate, split_pools

FAMILY = MnistCanvasFamily()


@pytest.fixture(scope="module")
def sample():
    return sources.load_mnist("sample")


def reference_canvas(recipe, pool_images, split, index):
    """Scalar re-statement of the documented draws, sample by sample (the oracle)."""
    rng = sample_rng(recipe.seed, split, index)
    c, k, n = recipe.canvas, recipe.clutter_size, len(pool_images)
    canvas = np.zeros((c, c), np.int64)
    top, left = rng.integers(0, c - DIGIT + 1, size=2)
    if recipe.clutter_count:
        others = rng.integers(0, n - 1, size=recipe.clutter_count)
        crop_at = rng.integers(0, DIGIT - k + 1, size=(recipe.clutter_count, 2))
        place_at = rng.integers(0, c - k + 1, size=(recipe.clutter_count, 2))
        for o, (cy, cx), (py, px) in zip(others, crop_at, place_at):
            o = o + (o >= index)
            assert o != index
            canvas[py : py + k, px : px + k] += pool_images[o, cy : cy + k, cx : cx + k]
    canvas[top : top + DIGIT, left : left + DIGIT] += pool_images[index]
    return np.minimum(canvas, 255).astype(np.uint8), (top, left)


@pytest.mark.parametrize("canvas, count, size", [(100, 8, 9), (60, 4, 8), (40, 0, 8), (28, 3, 28)])
def test_vectorised_canvases_match_the_scalar_oracle(sample, canvas, count, size):
    recipe = FAMILY.make_recipe("sample", canvas=canvas, clutter_count=count, clutter_size=size)
    pool_images, _ = split_pools(recipe, sample)["val"]
    out = generate(recipe, sample, "val", 10, 60)
    for row, index in enumerate(range(10, 60)):
        expected, (top, left) = reference_canvas(recipe, pool_images, "val", index)
        np.testing.assert_array_equal(out["images"][row, :, :, 0], expected)
        assert tuple(out["boxes"][row]) == (top, left, DIGIT, DIGIT)


def test_translated_canvas_holds_its_digit_at_its_box_and_nothing_else(sample):
    recipe = FAMILY.make_recipe("sample", canvas=60, clutter_count=0)
    pool_images, pool_labels = split_pools(recipe, sample)["train"]
    out = generate(recipe, sample, "train", 0, 500)
    for i, (top, left, h, w) in enumerate(out["boxes"]):
        assert 0 <= top <= 60 - h and 0 <= left <= 60 - w  # fully inside
        image = out["images"][i, :, :, 0].copy()
        np.testing.assert_array_equal(image[top : top + h, left : left + w], pool_images[i])
        image[top : top + h, left : left + w] = 0
        assert not image.any()
    np.testing.assert_array_equal(out["labels"], pool_labels[:500])


def test_clutter_adds_pixels_outside_the_box_and_keeps_grey_levels(sample):
    recipe = FAMILY.make_recipe("sample")  # the seed article's 100x100, 8 crops of 9x9
    out = generate(recipe, sample, "test", 0, 200)
    outside = out["images"][..., 0].astype(int).copy()
    for i, (top, left, h, w) in enumerate(out["boxes"]):
        outside[i, top : top + h, left : left + w] = 0
    assert (outside.reshape(200, -1) > 0).sum(1).min() > 0
    values = np.unique(out["images"])
    assert values.min() == 0 and values.max() == 255 and len(values) > 200  # never binarised


def test_splits_partition_the_source_digits_exactly_once(mnist_dir):
    real = sources.load_mnist("mnist", str(mnist_dir))
    recipe = FAMILY.make_recipe("mnist")
    pools = split_pools(recipe, real)
    assert {k: len(v[1]) for k, v in pools.items()} == {"train": 54000, "val": 6000, "test": 10000}
    # Identify each digit by its bytes and label: train + val is MNIST's training set as a multiset.
    def keys(images, labels):
        return sorted(row.tobytes() + bytes([label]) for row, label in zip(images, labels))

    assert sorted(keys(*pools["train"]) + keys(*pools["val"])) == keys(real.train_images, real.train_labels)
    np.testing.assert_array_equal(pools["test"][0], real.test_images)
    # No training digit is in val and no test digit in either (except byte-identical twins in MNIST).
    train = set(keys(*pools["train"]))
    val = set(keys(*pools["val"]))
    all_train = keys(real.train_images, real.train_labels)
    twins = len(all_train) - len(set(all_train))
    assert len(train & val) <= twins


def test_chunking_does_not_change_bytes(sample):
    recipe = FAMILY.make_recipe("sample", canvas=50, clutter_count=4, clutter_size=8)
    whole = generate(recipe, sample, "train", 0, 90)
    parts = [generate(recipe, sample, "train", a, b) for a, b in ((0, 7), (7, 50), (50, 90))]
    for name in whole:
        np.testing.assert_array_equal(whole[name], np.concatenate([p[name] for p in parts]))


def test_seed_changes_the_data(sample):
    a = generate(FAMILY.make_recipe("sample", seed=0), sample, "test", 0, 20)
    b = generate(FAMILY.make_recipe("sample", seed=1), sample, "test", 0, 20)
    assert not np.array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])  # test keeps MNIST's order


@pytest.mark.parametrize("bad", [dict(canvas=27), dict(clutter_size=29), dict(clutter_count=-1)])
def test_bad_recipes_are_refused(bad):
    with pytest.raises(ValueError):
        MnistCanvasRecipe(**bad)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, 2**32, 2**70 + 5])
@pytest.mark.parametrize("split", ["train", "val", "test", "extra"])
def test_sample_streams_draw_what_each_samples_own_numpy_generator_draws(seed, split):
    """`SampleStreams` runs the generators of a chunk side by side in numpy; every draw must be
    the one `default_rng(SeedSequence(seed, spawn_key=(split, index))).integers(...)` gives, in
    the same order: the calls the pipelines make (sizes 1-4, one range per row, a subset of rows,
    a row-dependent count, empty ranges that draw nothing) and ranges near 2**31, where Lemire's
    method rejects about half the draws and draws again."""
    from pipelines.canvas import SampleStreams

    for start, stop in [(0, 5), (997, 1003), (59_990, 60_000), (2**31 - 2, 2**31 + 1)]:
        b = stop - start
        streams = SampleStreams(seed, split, start, stop)
        numpy_gens = [sample_rng(seed, split, index) for index in range(start, stop)]
        plan = np.random.default_rng(seed % 1000)
        for _ in range(30):
            kind = int(plan.integers(0, 7))
            if kind == 0:
                high, size = int(plan.integers(1, 120)), int(plan.integers(0, 5))
                got, want = streams.integers(0, high, size), [g.integers(0, high, size=size) for g in numpy_gens]
            elif kind == 1:
                high = int(plan.choice([2**31 + 12345, 2**32 - 2]))
                got = streams.integers(3, high, (2, 2))
                want = [g.integers(3, high, size=(2, 2)) for g in numpy_gens]
            elif kind == 2:
                rows = plan.permutation(np.flatnonzero(plan.random(b) < 0.5))  # a subset, in any order
                lows = plan.integers(-5, 5, len(rows))
                highs = lows + plan.integers(1, 4, len(rows))  # +1: an empty range
                got = streams.integers(lows, highs, rows=rows)
                want = [numpy_gens[r].integers(lo, hi) for r, lo, hi in zip(rows, lows, highs)]
            elif kind == 3:
                counts, lows = plan.integers(0, 5, b), plan.integers(-3, 2, b)
                got = streams.integers_ragged(lows, lows + 7, counts)
                for g, row, c, lo in zip(numpy_gens, got, counts, lows):
                    assert row[:c].tolist() == g.integers(lo, lo + 7, size=c).tolist() and not row[c:].any()
                continue
            elif kind == 4:
                got, want = streams.integers(0, 10, (3, 0)), [g.integers(0, 10, size=(3, 0)) for g in numpy_gens]
            else:
                got, want = streams.integers(0, 1, 3), [g.integers(0, 1, size=3) for g in numpy_gens]
            assert np.array_equal(got, np.array(want)), kind
        with pytest.raises(ValueError, match="distinct"):
            streams.integers(0, 10, rows=[0, 0])


def test_saturating_pastes_equal_one_clip_of_the_whole_sum_in_any_order():
    rng = np.random.default_rng(7)
    b, c, k = 64, 12, 5
    patches = rng.integers(0, 256, (6, b, k, k), dtype=np.uint8)  # bright: most overlaps pass 255
    at = rng.integers(0, c - k + 1, (6, 2, b))
    wide = np.zeros((b, c, c), np.int64)
    for p, (top, left) in zip(patches, at):
        for row in range(b):
            wide[row, top[row] : top[row] + k, left[row] : left[row] + k] += p[row]
    expected = np.minimum(wide, 255).astype(np.uint8)
    assert (wide > 255).any()
    for order in (range(6), reversed(range(6))):
        canvas = np.zeros((b, c, c), np.uint8)
        for j in order:
            paste(canvas, patches[j], *at[j])
        np.testing.assert_array_equal(canvas, expected)
