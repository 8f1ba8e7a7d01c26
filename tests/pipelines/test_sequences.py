"""mnist-sequences and mnist-pairs: layout, exact digits at their boxes, reading order, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import zarr
from click.testing import CliRunner
from PIL import Image

from pipelines import sequences as seq
from pipelines.cli import main
from pipelines.sources import load_mnist
from pipelines.store import open_root, store_attrs


@pytest.fixture(scope="module")
def pool():
    """60 real MNIST digits (the embedded sample) as a split's source digits."""
    src = load_mnist("sample")
    return src.test_images[:60], src.test_labels[:60]


def _check_layout(out: dict, b: int, c: int):
    assert out["images"].shape == (b, c, c, 1) and out["images"].dtype == np.uint8
    assert out["labels"].shape == (b, 5) and out["labels"].dtype == np.uint8
    assert out["lengths"].shape == (b,) and out["lengths"].dtype == np.uint8
    assert out["boxes"].shape == (b, 5, 4) and out["boxes"].dtype == np.int32
    for labels, n, boxes in zip(out["labels"], out["lengths"], out["boxes"]):
        assert np.all(labels[:n] <= 9) and np.all(labels[n:] == seq.BLANK)
        assert np.all(boxes[n:] == 0) and np.all(boxes[:n, 2:] > 0)
        assert np.all(boxes[:n, :2] >= 0) and np.all(boxes[:n, :2] + boxes[:n, 2:] <= c)


def _find(digit: np.ndarray, pool_images: np.ndarray) -> list[int]:
    return [i for i, d in enumerate(pool_images) if np.array_equal(d, digit)]


def test_sequences_layout_and_source_digit(pool):
    images, labels = pool
    recipe = seq.SequenceRecipe()
    out = seq.generate_sequences(recipe, images, labels, "train", 0, 60)
    _check_layout(out, 60, 64)
    assert set(out["lengths"].tolist()) == {1, 2, 3, 4, 5}
    for i in range(60):  # sample i holds source digit i (at a random place in the number)
        assert labels[i] in out["labels"][i, : out["lengths"][i]]
    five = np.flatnonzero(out["lengths"] == 5)[0]
    assert out["boxes"][five, :5, 2].max() < 28  # a 5-digit strip is shrunk to fit 64 pixels
    lefts = out["boxes"][:, :, 1]
    for n, row in zip(out["lengths"], lefts):
        assert np.all(np.diff(row[:n]) > 0)  # left to right


def test_sequences_unscaled_digits_sit_exactly_at_their_boxes(pool):
    images, labels = pool
    recipe = seq.SequenceRecipe(canvas=160, min_gap=0, max_gap=3, jitter=5)  # fits unscaled, no overlap
    out = seq.generate_sequences(recipe, images, labels, "test", 0, 30)
    for i in range(30):
        covered = np.zeros((160, 160), bool)
        for j in range(out["lengths"][i]):
            t, l, h, w = out["boxes"][i, j]
            assert (h, w) == (28, 28)
            found = _find(out["images"][i, t : t + h, l : l + w, 0], images)
            assert found and labels[found[0]] == out["labels"][i, j]
            covered[t : t + h, l : l + w] = True
        assert not out["images"][i, ~covered].any()  # nothing outside the digits


def test_sequences_clutter_changes_pixels_only(pool):
    images, labels = pool
    plain = seq.generate_sequences(seq.SequenceRecipe(), images, labels, "val", 0, 20)
    cluttered = seq.generate_sequences(seq.SequenceRecipe(clutter_count=4), images, labels, "val", 0, 20)
    for k in ("labels", "lengths", "boxes"):
        np.testing.assert_array_equal(plain[k], cluttered[k])
    assert (cluttered["images"].astype(int) >= plain["images"]).all()
    assert cluttered["images"].sum() > plain["images"].sum()


@pytest.mark.parametrize("family", [seq.SEQUENCES, seq.PAIRS])
def test_samples_do_not_depend_on_chunking(pool, family):
    images, labels = pool
    recipe = family.recipe_type(clutter_count=2)
    whole = family._generate(recipe, images, labels, "train", 0, 50)
    parts = [family._generate(recipe, images, labels, "train", a, b) for a, b in ((0, 7), (7, 31), (31, 50))]
    for k in whole:
        np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]))
    other = family._generate(dataclasses.replace(recipe, seed=1), images, labels, "train", 0, 50)
    assert not np.array_equal(whole["images"], other["images"])
    assert not np.array_equal(whole["images"], family._generate(recipe, images, labels, "test", 0, 50)["images"])


def test_pairs_reading_order_and_exact_digits(pool):
    images, labels = pool
    out = seq.generate_pairs(seq.PairsRecipe(), images, labels, "train", 0, 60)
    _check_layout(out, 60, 100)
    assert np.all(out["lengths"] == 2)
    boxes = out["boxes"]
    assert np.all(boxes[:, :2, 2:] == 28)
    assert np.all(boxes[:, 0, 1] <= boxes[:, 1, 1])  # reading order: left to right
    apart = np.any(np.abs(boxes[:, 0, :2] - boxes[:, 1, :2]) >= 28, axis=1)
    assert apart.all()  # the two digits never overlap by default
    for i in range(60):
        digits = []
        for j in range(2):
            t, l = boxes[i, j, :2]
            found = _find(out["images"][i, t : t + 28, l : l + 28, 0], images)
            assert found and labels[found[0]] == out["labels"][i, j]
            digits += found
        assert i in digits  # sample i holds source digit i


def test_recipes_check_their_options():
    with pytest.raises(ValueError, match="lengths"):
        seq.SequenceRecipe(max_length=6)
    with pytest.raises(ValueError, match="gaps"):
        seq.SequenceRecipe(min_gap=-28)
    with pytest.raises(ValueError, match="cannot always place two non-overlapping"):
        seq.PairsRecipe(canvas=50)
    # 60x60 fits two digits side by side, but not beside one that fell in the middle: refused
    # (it used to spin forever in the rejection loop); with overlap allowed, 28 is enough.
    with pytest.raises(ValueError, match=r"needs >= 83"):
        seq.PairsRecipe(canvas=82)
    assert seq.PairsRecipe(canvas=83).canvas == 83 and seq.PairsRecipe(canvas=28, overlap=True).canvas == 28
    with pytest.raises(ValueError, match="cannot hold a 28x28 digit"):
        seq.PairsRecipe(canvas=27, overlap=True)


def test_family_on_the_embedded_sample():
    family = seq.SEQUENCES
    recipe = family.make_recipe("sample")
    source = family.load_source(recipe)
    assert family.split_sizes(recipe, source) == {"train": 2700, "val": 300, "test": 2000}
    assert family.array_specs(recipe) == {
        "images": ((64, 64, 1), "uint8"), "labels": ((5,), "uint8"), "lengths": ((), "uint8"), "boxes": ((5, 4), "int32"),
    }
    out = family.generate(recipe, source, "val", 290, 300)
    _check_layout(out, 10, 64)


# ---------------------------------------------------------------- through the CLI


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", ["mnist-sequences", "mnist-pairs"])
def test_cli_build_is_identical_across_worker_counts(tmp_path, empty_lock, name):
    stores = []
    for workers in (1, 2):
        out = tmp_path / f"{workers}.zarr"
        result = _cli("build", name, "--source", "sample", "--limit", 2100, "--workers", workers, "--out", out, "--quiet")
        assert result.exit_code == 0, result.output
        stores.append(store_attrs(out))
    one, two = stores
    assert one["digests"] == two["digests"]
    assert one["task"] == "sequence" and one["max_length"] == 5 and one["splits"] == {"train": 2100, "val": 300, "test": 2000}
    assert set(one["digests"]) == {f"{s}/{a}" for s in ("train", "val", "test") for a in ("images", "labels", "lengths", "boxes")}


def test_cli_verify_catches_corruption(tmp_path, empty_lock):
    out = tmp_path / "pairs.zarr"
    assert _cli("build", "mnist-pairs", "--source", "sample", "--limit", 1500, "--out", out, "--quiet").exit_code == 0
    assert _cli("verify", out).exit_code == 0
    lengths = zarr.open_array(str(out / "train" / "lengths"), mode="r+")
    lengths[1200] = 3  # a valid chunk with one wrong value
    result = _cli("verify", out)
    assert result.exit_code == 1
    assert "MISMATCH train/lengths" in result.output and "train/images" not in result.output


def test_cli_preview_draws_sequences_with_their_labels(tmp_path, empty_lock):
    out = tmp_path / "seq.zarr"
    assert _cli("build", "mnist-sequences", "--source", "sample", "--limit", 8, "--out", out, "--quiet").exit_code == 0
    result = _cli("preview", out, "--split", "test", "--count", 8, "--columns", 4, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    scale, caption = 2, 14  # the preview's tile layout: 64x64 scaled x2, a caption row above
    assert sheet.shape == (2 * (64 * scale + caption + 4), 4 * (64 * scale + 4), 3)
    test = open_root(out)["test"]
    for i in range(8):
        x0, y0 = (i % 4) * (64 * scale + 4) + 2, (i // 4) * (64 * scale + caption + 4) + caption + 2
        tile = sheet[y0 : y0 + 64 * scale, x0 : x0 + 64 * scale]
        red = (tile[..., 0] > 200) & (tile[..., 1] < 80)
        n = int(test["lengths"][i])
        assert red.sum() >= n * 4 * 10 * scale  # a red rectangle around each digit
        text = sheet[y0 - caption : y0, x0 : x0 + 64 * scale]
        inked_columns = (text.sum(axis=2) < 300).any(axis=0).sum()
        assert 3 * n <= inked_columns <= 8 * n  # the label string, one glyph per digit


@pytest.mark.parametrize("name", ["mnist-sequences", "mnist-pairs"])
def test_frozen_sample_versions_reproduce_the_checkout_lock(tmp_path, monkeypatch, name):
    """The generators still give the bytes frozen in datasets.lock (else: bump the version)."""
    monkeypatch.delenv("VISATT_LOCK", raising=False)
    out = tmp_path / "s.zarr"
    result = _cli("build", name, "--source", "sample", "--workers", 2, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    attrs = store_attrs(out)
    assert attrs["frozen"] and attrs["version"] == "1.0.0"
