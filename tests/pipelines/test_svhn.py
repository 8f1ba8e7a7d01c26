"""SVHN format 1: the digitStruct.mat reader, preprocessing, splits and fetching.

On a synthetic tree written by `svhn_fixtures` (exact expected crops and labels) and on the real
sample in ../shared/sources/svhn-format1-sample (images 1-3 present, more entries listed).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import svhn_fixtures as fx
from pipelines import svhn
from pipelines.archive import ArchiveError, Expected, file_checksums
from pipelines.cli import main
from pipelines.store import open_root, store_attrs
from pipelines.svhn import SvhnError, SvhnRecipe



@pytest.fixture
def tree(tmp_path):
    """A synthetic format-1 tree with train and test splits; returns (root, pixels)."""
    return tmp_path / "svhn", fx.write_small_tree(tmp_path / "svhn")


def _source(root: Path, **kw) -> svhn.SvhnSource:
    return svhn.load_svhn.__wrapped__(str(root), **kw)  # uncached: tests rewrite their trees


def _build(recipe: SvhnRecipe, source, split: str, **kw) -> dict[str, np.ndarray]:
    n = sum(len(i) for _, i in svhn.split_pools(recipe, source)[split])
    return svhn.generate(recipe, source, split, 0, n, **kw)


# ---------------------------------------------------------------- reader


def test_reader_decodes_both_bbox_encodings_and_maps_10_to_0(tree):
    root, _ = tree
    ds = svhn.read_digit_struct(root / "train" / "digitStruct.mat")
    assert ds.names == tuple(f for f, _ in fx.SMALL_ENTRIES)
    assert ds.lengths.tolist() == [1, 5, 6, 2, 2]
    for i, (file, digits) in enumerate(fx.SMALL_ENTRIES):
        name, labels, boxes = ds.entry(i)
        assert name == file
        assert labels.tolist() == [d[0] % 10 for d in digits]  # 10 -> 0
        assert boxes.tolist() == [list(map(float, d[1:])) for d in digits]
    assert ds.entry(0)[1].tolist() == [0]  # one digit, 1x1 encoding, label 10
    assert ds.entry(1)[1].tolist() == [1, 0, 5, 7, 2]  # five digits, column of references


def test_reader_limit_reads_only_the_first_entries(tree):
    root, _ = tree
    (root / "train" / "4.png").unlink()
    ds = svhn.read_split(root / "train", limit=2)
    assert ds.names == ("1.png", "2.png") and ds.lengths.tolist() == [1, 5]
    with pytest.raises(SvhnError, match=r"train/4\.png: image listed in digitStruct\.mat is missing$"):
        svhn.read_split(root / "train")


def test_reader_rejects_a_file_that_is_not_a_digit_struct(tmp_path):
    bad = tmp_path / "digitStruct.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(SvhnError, match="not a readable format-1 digitStruct.mat") as e:
        svhn.read_digit_struct(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(SvhnError, match="file not found"):
        svhn.read_digit_struct(tmp_path / "missing.mat")


@pytest.mark.parametrize(
    "split, labels",
    [
        ("train", [[1, 9], [2, 3], [2, 5]]),
        ("test", [[5], [2, 1, 0], [6]]),  # test 2.png is "210": SVHN stores its 0 as 10
        ("extra", [[4, 7, 8], [7, 1], [1, 7, 4]]),
    ],
)
def test_reader_on_the_real_sample(split, labels, svhn_sample):
    ds = svhn.read_split(svhn_sample / split, limit=3)
    assert ds.names == ("1.png", "2.png", "3.png")
    assert [ds.entry(i)[1].tolist() for i in range(3)] == labels
    assert ds.entry(0)[2].shape == (len(labels[0]), 4)
    # Every entry of the .mat parses; only images 1-3 exist, so the full read names 4.png.
    assert len(svhn.read_digit_struct(svhn_sample / split / "digitStruct.mat")) in (39, 40)
    with pytest.raises(SvhnError, match=rf"{split}/4\.png: image listed in digitStruct\.mat is missing"):
        svhn.read_split(svhn_sample / split)


def test_real_sample_train_boxes(svhn_sample):
    _, labels, boxes = svhn.read_split(svhn_sample / "train", limit=1).entry(0)
    assert labels.tolist() == [1, 9]
    assert boxes.tolist() == [[77, 246, 219, 81], [81, 323, 219, 96]]  # top, left, height, width


# ---------------------------------------------------------------- geometry


def test_crop_box_grows_30_percent_centred():
    box = np.array([[10.0, 12.0, 20.0, 20.0]])  # top, left, height, width
    assert svhn.crop_box(box, 0.0, 64, 80) == (10, 12, 30, 32)
    # 30% of 20 = 6 pixels, 3 on each side: (7, 9) .. (33, 35), a 26x26 box centred on the digits.
    assert svhn.crop_box(box, 0.3, 64, 80) == (7, 9, 33, 35)
    # Not the public bug (a 15% box shifted up-left, here (7, 9) .. (30, 32)).
    assert svhn.crop_box(box, 0.3, 64, 80) != (7, 9, 30, 32)


def test_crop_box_union_rounds_outward_and_clamps():
    boxes = np.array([[2.5, 1.0, 10.0, 5.0], [4.0, 7.0, 10.2, 5.0]])
    assert svhn.crop_box(boxes, 0.0, 100, 100) == (2, 1, 15, 12)  # bottom 14.2 -> 15
    assert svhn.crop_box(np.array([[-3.0, 70.0, 20.0, 20.0]]), 0.3, 64, 80) == (0, 67, 20, 80)


def test_map_boxes_scales_into_output_pixels():
    boxes = np.array([[10.0, 20.0, 20.0, 10.0], [10.0, 30.0, 20.0, 10.0]])
    out = svhn.map_boxes(boxes, (10, 20, 30, 40), 64)  # a 20x20 crop -> 64x64: x3.2
    assert out.dtype == np.int32
    assert out.tolist() == [[0, 0, 64, 32], [0, 32, 64, 32]]


# ---------------------------------------------------------------- preprocessing


def test_generate_crops_exactly_and_pads_labels(tree):
    root, pixels = tree
    source = _source(root)
    recipe = SvhnRecipe(size=20, val_fraction=0.0)  # union boxes are 20x20: output = the crop
    out = _build(recipe, source, "test")
    kept = [(f, d) for f, d in fx.SMALL_ENTRIES if len(d) <= 5]
    assert out["images"].shape == (4, 20, 20, 1) and out["images"].dtype == np.uint8
    assert out["labels"].tolist() == [fx.SMALL_LABELS[f] for f, _ in kept]
    assert out["lengths"].tolist() == [1, 5, 2, 2]
    for row, (file, digits) in enumerate(kept):
        t, l = min(d[1] for d in digits), min(d[2] for d in digits)
        np.testing.assert_array_equal(out["images"][row, ..., 0], pixels["test"][file][t : t + 20, l : l + 20, 0])
        expected = [[d[1] - t, d[2] - l, d[3], d[4]] for d in digits] + [[0] * 4] * (5 - len(digits))
        assert out["boxes"][row].tolist() == expected
    assert svhn.dropped_counts(source) == {"train": 1, "test": 1}


def test_generate_expanded_crop_is_centred(tree):
    root, pixels = tree
    recipe = SvhnRecipe(size=26, expand=0.3, val_fraction=0.0)
    out = _build(recipe, _source(root), "train")
    np.testing.assert_array_equal(out["images"][0, ..., 0], pixels["train"]["1.png"][7:33, 9:35, 0])
    assert out["boxes"][0, 0].tolist() == [3, 3, 20, 20]


def test_eval_splits_follow_eval_crop(tree):
    root, pixels = tree
    source = _source(root)
    cropped = _build(SvhnRecipe(size=20), source, "test")
    whole = _build(SvhnRecipe(size=20, eval_crop=False), source, "test")
    expected = Image.fromarray(pixels["test"]["1.png"]).convert("L").resize((20, 20), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(whole["images"][0, ..., 0], np.asarray(expected))
    assert not np.array_equal(whole["images"], cropped["images"])
    # 1.png's digit (10, 12, 20, 20) in a 64x80 image -> scaled by 20/64 and 20/80.
    assert whole["boxes"][0, 0].tolist() == [3, 3, 6, 5]
    # train is always cropped around its boxes
    train = _build(SvhnRecipe(size=20, eval_crop=False, val_fraction=0.0), source, "train")
    np.testing.assert_array_equal(train["images"], _build(SvhnRecipe(size=20, val_fraction=0.0), source, "train")["images"])


def test_pillow_shrinks_as_the_version_the_bytes_are_made_with():
    """SVHN crops (and shrunk sequence strips) are resized with PIL, so their bytes depend on how
    it resizes. Pillow 13 shrinks a crop that loses more height than width vertically first
    (Pillow PR 9549); Pillow 12 and earlier always went horizontally first, and give other bytes
    for such a crop. pyproject pins Pillow 13; this fails where another resize is installed."""
    import hashlib

    tall = np.random.default_rng(0).integers(0, 256, (80, 30)).astype(np.uint8)  # a single-digit crop's shape
    shrunk = np.asarray(Image.fromarray(tall).resize((32, 32), resample=svhn.RESAMPLE["bilinear"]))
    assert hashlib.sha256(shrunk.tobytes()).hexdigest() == "5535cd48d556f8f470f6652a1c0462f4da2b2c09851b7bb5e8a5ed0ecc9e14aa"


def test_grayscale_is_itu_r_601_luma_and_colour_is_kept(tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 100, 50]], np.uint8)
    pixels = np.repeat(np.repeat(colours[None], 8, axis=0), 8, axis=1)  # (8, 32, 3): 4 colour bands
    fx.write_split(tmp_path / "train", [("1.png", [(1, 0, 0, 8, 32)])], {"1.png": pixels})
    fx.write_split(tmp_path / "test", [("1.png", [(1, 0, 0, 8, 32)])], {"1.png": pixels})
    source = _source(tmp_path)
    gray = svhn.generate(SvhnRecipe(size=8, resample="nearest", val_fraction=0.0), source, "train", 0, 1)["images"]
    luma = colours.astype(float) @ [0.299, 0.587, 0.114]  # L = R*299/1000 + G*587/1000 + B*114/1000
    np.testing.assert_allclose(gray[0, 0, ::2, 0], luma, atol=1)
    rgb = svhn.generate(SvhnRecipe(size=8, color=True, resample="nearest", val_fraction=0.0), source, "train", 0, 1)
    assert rgb["images"].shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(rgb["images"][0, 0, ::2], colours)


def test_unreadable_image_is_named(tree):
    root, _ = tree
    (root / "test" / "2.png").write_bytes(b"not a png")
    with pytest.raises(SvhnError, match=r"test/2\.png: unreadable image") as e:
        _build(SvhnRecipe(), _source(root), "test")
    assert "\n" not in str(e.value)


def test_threads_give_the_same_bytes(tree):
    root, _ = tree
    source = _source(root)
    one = _build(SvhnRecipe(), source, "test")
    two = _build(SvhnRecipe(), source, "test", workers=3)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def test_recipe_checks_its_options():
    with pytest.raises(ValueError, match="resample 'cubic' is not one of"):
        SvhnRecipe(resample="cubic")
    for expand in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="expand .* must be a finite number >= 0"):
            SvhnRecipe(expand=expand)


# ---------------------------------------------------------------- splits


def test_val_is_a_seeded_carve_of_train_and_extra_is_folded_in(tmp_path):
    entries, _ = fx.realistic_entries(40, seed=3)
    for split in ("train", "test", "extra"):
        (tmp_path / split).mkdir()
        fx.write_digit_struct(tmp_path / split / "digitStruct.mat", entries)
        for file, _ in entries:
            Image.new("RGB", (8, 8)).save(tmp_path / split / file)
    source = _source(tmp_path, splits=("train", "test", "extra"))
    recipe = SvhnRecipe(val_fraction=0.25, seed=5)
    pools = svhn.split_pools(recipe, source)
    train, val = pools["train"][0][1], pools["val"][0][1]
    assert len(val) == 10 and len(train) == 30
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(40))
    assert np.array_equal(val, svhn.split_pools(SvhnRecipe(val_fraction=0.25, seed=5), source)["val"][0][1])
    assert not np.array_equal(val, svhn.split_pools(SvhnRecipe(val_fraction=0.25, seed=6), source)["val"][0][1])
    with_extra = svhn.split_pools(dataclasses.replace(recipe, extra=True), source)
    assert [name for name, _ in with_extra["train"]] == ["train", "extra"]
    assert np.array_equal(with_extra["val"][0][1], val)


def test_real_sample_builds_with_limit(svhn_sample):
    source = _source(svhn_sample, limit=3)
    recipe = SvhnRecipe(limit=3)
    assert {k: sum(len(i) for _, i in v) for k, v in svhn.split_pools(recipe, source).items()} == {
        "train": 3, "val": 0, "test": 3,
    }
    out = _build(recipe, source, "test")
    assert out["images"].shape == (3, 32, 32, 1)
    assert out["labels"].tolist() == [[5, 10, 10, 10, 10], [2, 1, 0, 10, 10], [6, 10, 10, 10, 10]]
    assert out["lengths"].tolist() == [1, 3, 1]
    assert set(source.checksums) == {"train/digitStruct.mat", "train/images", "test/digitStruct.mat", "test/images"}
    with pytest.raises(SvhnError, match=r"4\.png"):
        _source(svhn_sample)


# ---------------------------------------------------------------- fetching


def _archive(tmp_path: Path, root: Path, split: str) -> Path:
    path = tmp_path / "archives" / f"{split}.tar.gz"
    path.parent.mkdir(exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / split, arcname=split)  # the official layout: train/1.png, ...
    return path


def test_fetch_from_archives_and_folders(tree, tmp_path):
    root, _ = tree
    archive = _archive(tmp_path, root, "train")
    (root / "test").rename(tmp_path / "archives" / "test")  # an already extracted folder
    expected = {"train": Expected(**file_checksums(archive)), "test": None}
    cache = tmp_path / "cache"
    got = svhn.fetch_svhn(cache, from_dir=tmp_path / "archives", archives=expected, log=lambda *_: None)
    assert got == {"train": cache / "train", "test": cache / "test"}
    assert len(svhn.read_split(cache / "train")) == len(svhn.read_split(cache / "test")) == 5
    source = _source(cache)
    assert source.checksums["train.tar.gz"] == file_checksums(archive)["sha256"]
    # The official md5 is checked when no other is given.
    with pytest.raises(ArchiveError, match="size is .* expected 404141560"):
        svhn.install_archive(archive, tmp_path / "other", "train")


def test_fetch_downloads_from_a_mirror(tree, tmp_path):
    root, _ = tree
    archives = {split: _archive(tmp_path, root, split) for split in ("train", "test")}
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "archives"))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{httpd.server_address[1]}/"
        expected = {split: Expected(**file_checksums(path)) for split, path in archives.items()}
        got = svhn.fetch_svhn(tmp_path / "cache", mirrors=(mirror,), archives=expected, log=lambda *_: None)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "test", "test.tar.gz", "test.tar.gz.json", "train", "train.tar.gz", "train.tar.gz.json",
    ]
    assert svhn.read_split(got["test"]).names == tuple(f for f, _ in fx.SMALL_ENTRIES)


def test_fetch_names_what_is_missing(tmp_path):
    with pytest.raises(SvhnError, match=r"neither train/digitStruct\.mat nor train\.tar\.gz"):
        svhn.fetch_svhn(tmp_path / "cache", from_dir=tmp_path, log=lambda *_: None)


# ---------------------------------------------------------------- through the CLI


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_builds_the_real_sample_with_limit(tmp_path, empty_lock, svhn_sample):
    out = tmp_path / "real.zarr"
    result = _cli("build", "svhn", "--from", svhn_sample, "--limit", 3, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "evaluation crop: val and test cropped around their digit boxes" in result.output
    root = open_root(out)
    attrs = root.attrs["visatt"]
    assert attrs["version"] is None and attrs["recipe"]["limit"] == 3 and attrs["task"] == "sequence"
    assert attrs["sources"]["test/digitStruct.mat"] == svhn._sha256_file(svhn_sample / "test" / "digitStruct.mat")
    assert root["test"]["labels"][:].tolist() == [[5, 10, 10, 10, 10], [2, 1, 0, 10, 10], [6, 10, 10, 10, 10]]
    assert root["train"]["images"].shape == (3, 32, 32, 1)
    assert "note: no val samples: visatt-train needs train and val" in result.output  # 10% of 3 rounds to 0
    assert _cli("verify", out).exit_code == 0
    extra = tmp_path / "extra.zarr"  # --limit reads 3 of each source split: extra's follow train's
    result = _cli("build", "svhn", "--from", svhn_sample, "--limit", 3, "--extra", "--out", extra, "--quiet")
    assert result.exit_code == 0, result.output
    train = open_root(extra)["train"]["labels"][:].tolist()
    assert train[:3] == root["train"]["labels"][:].tolist()
    assert train[3:] == [[4, 7, 8, 10, 10], [7, 1, 10, 10, 10], [1, 7, 4, 10, 10]]  # extra 1-3.png
    result = _cli("build", "svhn", "--from", svhn_sample, "--out", tmp_path / "all.zarr", "--quiet")
    assert result.exit_code == 1
    assert "4.png: image listed in digitStruct.mat is missing" in result.output
    assert not (tmp_path / "all.zarr").exists()


def test_cli_build_from_a_synthetic_tree_is_identical_across_workers(tree, tmp_path, empty_lock):
    root, _ = tree
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"{workers}.zarr"
        result = _cli("build", "svhn-64", "--from", root, "--workers", workers, "--out", out, "--quiet",
                      "--val-fraction", 0.25, "--color")
        assert result.exit_code == 0, result.output
        assert "numbers longer than 5 digits dropped: train 1, test 1" in result.output
        digests.append(store_attrs(out))
    attrs = digests[0]
    assert attrs["digests"] == digests[1]["digests"]
    assert attrs["splits"] == {"train": 3, "val": 1, "test": 4}
    assert attrs["recipe"]["expand"] == 0.3 and attrs["recipe"]["size"] == 64 and attrs["recipe"]["color"]
    assert attrs["dropped_longer_than_5"] == {"train": 1, "test": 1}


def test_cli_fetch_svhn_from_archives(tree, tmp_path, monkeypatch):
    root, _ = tree
    for split in ("train", "test"):
        _archive(tmp_path, root, split)
    monkeypatch.setenv("VISATT_HOME", str(tmp_path / "home"))
    result = _cli("fetch", "svhn", "--from", tmp_path / "archives")
    # The fixture archives are not the official ones: their size and md5 are refused, by name.
    assert result.exit_code == 1
    assert "train.tar.gz: size is" in result.output and "expected 404141560" in result.output
    result = _cli("fetch", "svhn", "--from", root)  # extracted folders are checked and copied
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "sources" / "svhn" / "test" / "digitStruct.mat").is_file()


def test_cli_refuses_options_of_other_datasets(tmp_path, empty_lock):
    result = _cli("build", "svhn", "--canvas", 64, "--out", tmp_path / "x.zarr")
    assert result.exit_code == 1 and "svhn has no option canvas" in result.output
    result = _cli("build", "svhn", "--source", "sample", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 1 and "svhn is built from source svhn, not 'sample'" in result.output


def test_the_parsed_index_is_cached_by_checksum_and_read_from_the_cache(tree):
    """A whole digitStruct.mat is parsed once per machine: the index lands in the cache under its
    sha256 and later reads take it from there (shown by a cache entry this test edits)."""
    root, _ = tree
    mat = root / "train" / "digitStruct.mat"
    first = svhn.read_digit_struct(mat)
    cached = svhn.index_cache_path(svhn._sha256_file(mat))
    assert cached.is_file()
    with np.load(cached) as z:
        data = {k: z[k] for k in z.files}
    data["names"] = np.asarray(["edited.png", *first.names[1:]])
    np.savez(cached, **data)
    again = svhn.read_digit_struct(mat)
    assert again.names == ("edited.png", *first.names[1:]) and np.array_equal(again.labels, first.labels)
    assert svhn.read_digit_struct(mat, limit=1).names == ("edited.png",)
    cached.write_bytes(b"not an npz")  # a damaged cache entry is parsed again, not trusted
    assert svhn.read_digit_struct(mat).names == first.names
