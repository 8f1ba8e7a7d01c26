"""Wall time of an `svhn` build the size of SVHN's test split (13,068 images), from a synthetic tree.

    .venv/bin/python -m benchmarks.bench_svhn                 # from the repository root
    .venv/bin/python -m benchmarks.bench_svhn --workers 1 2   # scaling

The real archives cannot be downloaded here, so the tree is written by the tests' fixture writer
(`tests/pipelines/svhn_fixtures.py`): PNGs of SVHN-like sizes (widths 30-500 px, median ~100 px,
about 2:1, 1-4 digits, ~17 kB each; SVHN's test archive averages ~21 kB) and a MATLAB v7.3 `digitStruct.mat` with object
references, like the real files. `test` holds 13,068 images, `train` 32 (the build needs both).
The tree is written once (about a minute) into `--tree` and reused.

Timed: the whole `build_dataset("svhn", ...)` call: reading both `digitStruct.mat` files,
checking every image exists, hashing every source file, decoding, cropping, grayscale, resizing,
writing and digesting the Zarr store. Other processes sharing the CPU lower the numbers: run it
more than once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipelines import svhn
from pipelines.build import build_dataset
from pipelines.store import store_attrs
from tests.pipelines.svhn_fixtures import write_realistic_split

TEST_IMAGES = 13068  # SVHN format 1 test split
TRAIN_IMAGES = 32


def ensure_tree(root: Path) -> Path:
    for split, n, seed in (("test", TEST_IMAGES, 0), ("train", TRAIN_IMAGES, 1)):
        folder = root / split
        if not (folder / "digitStruct.mat").is_file() or len(svhn.read_digit_struct(folder / "digitStruct.mat")) != n:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"writing a synthetic {split} split of {n} images into {folder} ...", flush=True)
            write_realistic_split(folder, n, seed=seed)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(".data/bench-svhn"), help="synthetic tree (reused)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--name", default="svhn", choices=["svhn", "svhn-64"])
    args = parser.parse_args()
    root = ensure_tree(args.tree)
    size = sum(p.stat().st_size for p in (root / "test").glob("*.png"))
    print(f"tree: {root} ({TEST_IMAGES} test + {TRAIN_IMAGES} train images, {size / 2**20:.0f} MiB of PNG in test)")
    with tempfile.TemporaryDirectory() as home:  # the digitStruct index cache: parse once, then read
        os.environ["VISATT_HOME"] = home
        mat = root / "test" / "digitStruct.mat"
        t0 = time.perf_counter()
        svhn.read_digit_struct(mat)
        parse = time.perf_counter() - t0
        t0 = time.perf_counter()
        svhn.read_digit_struct(mat)
        cached = time.perf_counter() - t0
        print(f"test digitStruct.mat ({TEST_IMAGES} entries): parsed in {parse:.2f} s, read from the index cache "
              f"in {cached:.3f} s ({parse / cached:.0f}x)")
    for workers in args.workers:
        svhn.load_svhn.cache_clear()  # time the .mat reading in every run (parsed: a fresh cache)
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            os.environ["VISATT_HOME"] = str(Path(tmp) / "home")
            (Path(tmp) / "datasets.lock").write_text('{"datasets": {}, "format": 1}\n')  # SVHN is not frozen
            t0 = time.perf_counter()
            out = build_dataset(args.name, Path(tmp) / "svhn.zarr", source_dir=root, workers=workers,
                                progress=False, lock_path=Path(tmp) / "datasets.lock")
            wall = time.perf_counter() - t0
            n = sum(store_attrs(out)["splits"].values())
        print(f"{args.name} build, {n} images, workers={workers}: {wall:.1f} s wall "
              f"({n / wall:.0f} images/s; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
