"""Sharing frozen versions: pack, read from a packed file and over real (loopback) HTTP, get into
the cache, names for cached stores, and tampered data refused on the way."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from http_server import serve
from pipelines import catalog, store
from pipelines.cli import main
from pipelines.lock import Lock
from pipelines.reader import Split, open_store

NAME = "mnist-cluttered-60"  # a frozen version of the embedded sample: real digits, a few seconds to build
PACKED = f"{NAME}-1.0.0-sample.zarr.zip"


def cli(*args, ok=True, env=None):
    result = CliRunner(env=env).invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A folder as a collaborator would publish it: the store folder and its packed file."""
    folder = tmp_path_factory.mktemp("shared")
    cli("build", NAME, "--source", "sample", "--out", folder / "store.zarr", "--quiet", "--workers", 2)
    cli("pack", folder / "store.zarr", "--out", folder, "--quiet")
    return folder


@pytest.fixture(scope="module")
def url(shared):
    with serve(shared) as base:
        yield base


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISATT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tamper(src: Path, dst: Path) -> Path:
    """A copy of the store with one byte flipped in the middle of the first train-label chunk."""
    shutil.copytree(src, dst)
    chunk = next(p for p in sorted((dst / "train" / "labels").rglob("*")) if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return dst


def test_pack_writes_one_file_named_by_version_with_the_same_digests_and_the_same_bytes_twice(shared, tmp_path):
    packed = shared / PACKED
    assert packed.is_file() and oct(packed.stat().st_mode & 0o077) != "0o0"  # not a private temp file
    assert store.recompute_digests(packed) == store.store_attrs(shared / "store.zarr")["digests"]
    again = cli("pack", shared / "store.zarr", "--out", tmp_path / "again.zip", "--quiet")
    assert "every digest checked" in again.output
    assert sha256(tmp_path / "again.zip") == sha256(packed)
    refused = cli("pack", shared / "store.zarr", "--out", tmp_path / "again.zip", ok=False)
    assert refused.exit_code == 1 and "already exists" in refused.output


def test_pack_refuses_a_damaged_store_and_leaves_no_file(shared, tmp_path):
    damaged = tamper(shared / "store.zarr", tmp_path / "damaged.zarr")
    result = cli("pack", damaged, "--out", tmp_path / "out.zip", "--quiet", ok=False)
    assert result.exit_code == 1 and "train/labels" in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.zarr"]


@pytest.mark.parametrize("where", ["folder", "packed", "packed?query"])
def test_verify_and_info_read_a_store_over_http(url, where):
    location = {"folder": f"{url}/store.zarr", "packed": f"{url}/{PACKED}",
                "packed?query": f"{url}/{PACKED}?download=1"}[where]  # a query string, as download links have
    verified = cli("verify", location)
    assert "OK, every digest matches" in verified.output and f"matches {NAME} 1.0.0 (sample)" in verified.output
    info = json.loads(cli("info", location, "--json").output)
    assert info["attributes"]["dataset"] == NAME and info["splits"]["test"]["samples"] == 2000


def test_a_tampered_byte_served_over_http_is_refused(shared, tmp_path, home):
    tamper(shared / "store.zarr", tmp_path / "site" / "store.zarr")
    with serve(tmp_path / "site") as base:
        verified = cli("verify", f"{base}/store.zarr", ok=False)
        assert verified.exit_code == 1 and "MISMATCH train/labels" in verified.output
        got = cli("get", f"{NAME}:sample", "--from", f"{base}/store.zarr", "--quiet", ok=False)
        assert got.exit_code == 1 and "train/labels" in got.output and "nothing was copied" in got.output
        with pytest.raises(store.StoreError, match="train/labels does not match its recorded digest"):
            Split(open_store(f"{base}/store.zarr"), "train")
    assert not (home / "stores").exists() or not any((home / "stores").iterdir())  # nothing left behind


def test_get_copies_a_packed_store_from_http_into_the_cache_and_names_find_it(url, home):
    result = cli("get", f"{NAME}@1.0.0:sample", "--from", f"{url}/{PACKED}", "--quiet")
    cached = home / "stores" / f"{NAME}-1.0.0-sample.zarr"
    assert str(cached) in result.output and cached.is_dir()
    assert "OK, every digest matches" in cli("verify", f"{NAME}:sample").output
    assert store.store_attrs(cached)["digests"] == Lock().entry(NAME, "1.0.0", "sample")["digests"]
    listed = cli("list").output
    assert f"[cached: {cached}]" in listed
    again = cli("get", f"{NAME}:sample", "--from", f"{url}/{PACKED}", ok=False)
    assert again.exit_code == 1 and "already in the cache" in again.output
    cli("get", f"{NAME}:sample", "--from", f"{url}/store.zarr", "--overwrite", "--quiet")
    assert "OK" in cli("verify", cached).output


def test_build_into_the_cache_takes_only_a_locked_version_and_its_name_finds_it(home):
    built = cli("build", NAME, "--source", "sample", "--cache", "--quiet").output
    cached = home / "stores" / f"{NAME}-1.0.0-sample.zarr"
    assert f"{cached}: {NAME} 1.0.0 (frozen)" in built
    assert built.splitlines()[-1] == f"cached: its name finds it (visatt-train --store {NAME}:sample, pipelines.load('{NAME}:sample'))"
    assert store.store_attrs(cached)["digests"] == Lock().entry(NAME, "1.0.0", "sample")["digests"]
    assert "OK, every digest matches" in cli("verify", f"{NAME}:sample").output
    assert f"[cached: {cached}]" in cli("list").output
    again = cli("build", NAME, "--source", "sample", "--cache", "--quiet", ok=False)
    assert again.exit_code == 1 and "already exists (use --overwrite" in again.output
    custom = cli("build", NAME, "--source", "sample", "--cache", "--limit", 5, "--canvas", 40, ok=False)
    assert custom.exit_code == 2 and "--cache builds the frozen recipe of a locked version: drop --limit, --canvas" in custom.output
    elsewhere = cli("build", NAME, "--source", "sample", "--cache", "--out", home / "x.zarr", "--update-lock", ok=False)
    assert elsewhere.exit_code == 2 and "drop --out, --update-lock" in elsewhere.output
    unlocked = cli("build", "svhn", "--cache", ok=False)
    assert unlocked.exit_code == 1 and "svhn 1.0.0 (svhn) is not locked in" in unlocked.output
    # What a name not in the cache says to do: only what the command would then do.
    hint = lambda ref: cli("verify", ref, ok=False).output
    assert "`visatt-data build svhn --out PATH` builds one (unlocked) to pass as PATH" in hint("svhn")
    assert "this visatt builds 1.0.0 only" in hint(f"{NAME}@0.9.0:sample")
    assert sorted(p.name for p in (home / "stores").iterdir()) == [cached.name]


def test_get_refuses_another_dataset_or_an_unlocked_version_and_leaves_nothing(url, home):
    other = cli("get", "mnist-cluttered:sample", "--from", f"{url}/{PACKED}", ok=False)
    assert other.exit_code == 1 and f"holds {NAME} 1.0.0 (sample), not mnist-cluttered 1.0.0 (sample)" in other.output
    unknown = cli("get", f"{NAME}@9.9.9:sample", "--from", f"{url}/{PACKED}", ok=False)
    assert unknown.exit_code == 1 and "not a frozen version" in unknown.output
    missing = cli("verify", f"{NAME}:sample", ok=False)
    assert missing.exit_code == 1 and "is not in the cache" in missing.output and "visatt-data get" in missing.output
    assert f"`visatt-data build {NAME} --source sample --cache` builds it there" in missing.output
    assert not (home / "stores").exists() or not any((home / "stores").iterdir())


def test_a_missing_url_and_a_missing_fsspec_backend_are_one_line_errors(url):
    nothing = cli("info", f"{url}/nothing.zarr", ok=False)
    assert nothing.exit_code == 1 and "nothing.zarr" in nothing.output and len(nothing.output.strip().splitlines()) == 1
    try:
        import s3fs  # noqa: F401
    except ImportError:
        s3 = cli("info", "s3://bucket/store.zarr", ok=False)
        assert s3.exit_code == 1 and "pip install 'visatt[s3]'" in s3.output


def test_a_store_whose_attributes_disagree_with_the_lock_is_refused_before_reading(shared, tmp_path):
    lock = Lock()
    entry = json.loads(json.dumps(lock.entry(NAME, "1.0.0", "sample")))
    entry["digests"]["test/images"] = "sha256:" + "0" * 64
    edited = tmp_path / "datasets.lock"
    edited.write_text(json.dumps({"format": 1, "datasets": {NAME: {"1.0.0": {"sample": entry}}}}))
    with pytest.raises(store.StoreError, match="test/images differ from"):
        open_store(shared / "store.zarr", lock_path=edited)
    assert open_store(shared / "store.zarr", lock_path=edited, verify=False).dataset == NAME


def test_the_lock_ships_inside_the_package_and_the_checkout_links_to_it():
    lock = Lock()
    assert lock.path.parent.name == "pipelines" and lock.exists and lock.entry(NAME, "1.0.0", "sample")
    root = Path(__file__).resolve().parents[2] / "datasets.lock"
    assert root.resolve() == lock.path.resolve()


def test_a_build_without_a_lock_file_says_so(tmp_path):
    missing = tmp_path / "none.lock"
    result = CliRunner().invoke(main, ["build", "mnist-translated", "--source", "sample", "--limit", "8", "--canvas", "32",
                                       "--out", str(tmp_path / "s.zarr"), "--quiet", "--lock", str(missing)])
    assert result.exit_code == 0, result.output
    assert f"WARNING: no lock file at {missing}" in result.stderr


def test_list_shows_release_notes_and_diff_names_what_differs(tmp_path):
    listed = cli("list").output
    assert f"{NAME} 1.0.0:" in listed and "1.0.0: First release." in listed
    sources = cli("diff", NAME, "1.0.0:mnist", "1.0.0:sample", ok=False)
    assert sources.exit_code == 1  # they differ, as diff(1) says
    assert "recipe source: 'mnist' -> 'sample'" in sources.output and "split train:" in sources.output
    same = cli("diff", NAME, "1.0.0:sample", "1.0.0:sample").output.splitlines()
    assert same[1] == "  identical: same recipe, sources and bytes" and same[2].startswith("  arrays: 0 differ")
    lock = Lock()
    entry = json.loads(json.dumps(lock.entry(NAME, "1.0.0", "sample")))
    changed = json.loads(json.dumps(entry))
    changed["recipe"]["clutter_count"] = 6
    changed["digests"]["train/images"] = "sha256:" + "1" * 64
    two = tmp_path / "two.lock"
    two.write_text(json.dumps({"format": 1, "datasets": {NAME: {"1.0.0": {"sample": entry}, "2.0.0": {"sample": changed}}}}))
    diff = cli("diff", NAME, "1.0.0:sample", "2.0.0:sample", "--lock", two, ok=False).output.splitlines()
    assert diff[0] == f"{NAME} 1.0.0:sample -> 2.0.0:sample"
    assert "  recipe clutter_count: 4 -> 6" in diff
    assert any(line.startswith("  arrays: 1 differ (train/images)") for line in diff)
    missing = cli("diff", NAME, "1.0.0:sample", "3.0.0:sample", "--lock", two, ok=False)
    assert missing.exit_code == 2 and "locked: 1.0.0:sample, 2.0.0:sample" in missing.output  # trouble, not a difference


def test_a_missing_lock_path_from_the_environment_is_not_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VISATT_LOCK", str(tmp_path / "x.lock"))
    assert Lock().path == tmp_path / "x.lock" and not Lock().exists
    monkeypatch.delenv("VISATT_LOCK")
    assert os.path.samefile(Lock().path, Path(catalog.__file__).parent / "datasets.lock")


def test_load_reads_a_split_by_location_and_by_cached_name(shared, url, home):
    by_path = __import__("pipelines").load(shared / "store.zarr", split="test")
    assert by_path.images.shape == (2000, 60, 60, 1) and by_path.labels.shape == (2000,)
    over_http = __import__("pipelines").load(f"{url}/{PACKED}", split="test", lazy=True)
    assert not over_http.in_memory and np.array_equal(over_http[5][0], by_path.images[5])
    with pytest.raises(store.StoreError, match="not in the cache"):
        __import__("pipelines").load(NAME, source="sample")
    built = __import__("pipelines").load(NAME, source="sample", split="val", build=True)
    assert built.info.path == home / "stores" / f"{NAME}-1.0.0-sample.zarr" and built.info.frozen
    assert np.array_equal(built.labels, __import__("pipelines").load(shared / "store.zarr", split="val").labels)


def test_a_wheel_install_finds_the_packaged_lock(tmp_path):
    """Built as a user's `pip install` would build it, the wheel carries datasets.lock and its
    `pipelines` finds it (run from the unpacked wheel, away from the checkout)."""
    import subprocess
    import sys
    import zipfile

    root, src = Path(__file__).resolve().parents[2], tmp_path / "src"  # built from a copy: no build/ in the checkout
    for name in ("pipelines", "visatt_models"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("visatt-*.whl"))
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = "import pipelines.lock as l; lock = l.Lock(); print(l.__file__); print(lock.path, lock.exists, len(lock.versions()))"
    env = {k: v for k, v in os.environ.items() if k != "VISATT_LOCK"} | {"PYTHONPATH": str(tmp_path / "site")}
    printed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert printed[0] == str(tmp_path / "site" / "pipelines" / "lock.py")
    assert printed[1] == f"{tmp_path / 'site' / 'pipelines' / 'datasets.lock'} True {len(Lock().versions())}"


def test_a_streamed_split_is_checked_while_it_is_read_without_a_second_pass(shared, tmp_path):
    """A whole split streamed chunk by chunk is verified by its first full pass; a deleted chunk
    (which zarr reads as zeros) is refused when that pass completes, not silently used after."""
    split = Split(open_store(shared / "store.zarr"), "train", memory_limit=1)
    assert not split.in_memory and not split.verified and split.num_chunks > 2
    for c in range(split.num_chunks - 1):
        split.read_chunks([c])
    assert not split.verified
    split.read_chunks([split.num_chunks - 1, 0])  # the last unseen chunk completes the digests
    assert split.verified

    damaged = shutil.copytree(shared / "store.zarr", tmp_path / "damaged.zarr")
    chunk = sorted(p for p in (damaged / "train" / "images").rglob("*") if p.is_file() and p.name != "zarr.json")[2]
    chunk.unlink()
    streamed = Split(open_store(damaged), "train", memory_limit=1)  # no pre-pass: it opens at once
    for c in range(streamed.num_chunks - 1):
        streamed.read_chunks([c])
    with pytest.raises(store.StoreError, match="train/images does not match its recorded digest"):
        streamed.read_chunks([streamed.num_chunks - 1])
    with pytest.raises(store.StoreError, match="train/images does not match"):  # and it stays refused
        streamed.read_chunks([streamed.num_chunks - 1])
    with pytest.raises(store.StoreError, match="train/images does not match"):  # a prefix is checked at once
        Split(open_store(damaged), "train", limit=100, memory_limit=1)


def test_load_refuses_an_unknown_version_or_source_before_anything_else(home):
    with pytest.raises(ValueError, match="not a dataset version and source"):
        __import__("pipelines").load(NAME, source="../../x", build=True)
    with pytest.raises(store.StoreError, match="is not in the cache"):
        __import__("pipelines").load(NAME, version="9.9.9", source="sample")


def test_load_with_build_works_from_a_plain_script_without_a_main_guard(tmp_path):
    """The README's example is a plain script: building from it must not spawn processes that
    re-run the script (a spawned pool needs an `if __name__ == "__main__":` guard)."""
    import subprocess
    import sys

    script = tmp_path / "first.py"
    script.write_text('import pipelines\nsplit = pipelines.load("mnist-translated-60", source="sample", split="test", '
                      'build=True, workers=2)\nprint(split.images.shape)\n')
    env = dict(os.environ, VISATT_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2000, 60, 60, 1)"
