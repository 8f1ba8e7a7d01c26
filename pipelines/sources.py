"""Raw MNIST sources: the IDX reader, checksums of decoded content, the cache and `fetch`.

Checksums are sha256 of the *decompressed* IDX bytes, so a re-compressed mirror of the same data
still verifies (the shared `train-images-idx3-ubyte.gz` is one).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np

from pipelines.archive import mirrors_failed, new_folders


class SourceError(Exception):
    """A source file is missing, malformed or does not match its checksum (one-line message)."""


# IDX type codes (LeCun's format): only unsigned bytes are used by MNIST.
_IDX_DTYPES = {0x08: np.uint8}


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One source file: its name without `.gz`, sha256 and size of the decoded content."""

    name: str
    sha256: str
    size: int


MNIST_FILES = (
    SourceFile("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
    SourceFile("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
    SourceFile("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
    SourceFile("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
)

# Tried in order; each file is verified against MNIST_FILES whatever mirror it came from.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# The embedded sample: the first SAMPLE_SIZES[split] digits of the real files, written by
# `pipelines/data/make_sample.py`; their checksums are in `pipelines/data/SHA256SUMS.txt`.
SAMPLE_SIZES = {"train": 3000, "test": 2000}


def visatt_home() -> Path:
    """Cache root: `$VISATT_HOME`, default `~/.cache/visatt`."""
    return Path(os.environ.get("VISATT_HOME") or Path.home() / ".cache" / "visatt")


def mnist_cache_dir() -> Path:
    return visatt_home() / "sources" / "mnist"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_decoded(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def read_decoded(path: Path) -> bytes:
    """The decompressed bytes of a (gzipped or raw) file."""
    path = Path(path)
    try:
        with _open_decoded(path) as f:
            return f.read()
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: cannot decompress ({e})") from None


def sha256_decoded(path: Path) -> str:
    return hashlib.sha256(read_decoded(path)).hexdigest()


def parse_idx(data: bytes, path: Path, *, num_classes: int | None = None) -> np.ndarray:
    """Decode IDX bytes, checking magic, dimensions, size and (for labels) the label range."""
    if len(data) < 4:
        raise SourceError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise SourceError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000080N)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SourceError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise SourceError(
            f"{path}: size {len(data)} bytes does not match dimensions {shape} (expected {expected})"
        )
    array = np.frombuffer(data, dtype=_IDX_DTYPES[dtype_code], offset=header).reshape(shape)
    if num_classes is not None:
        if ndim != 1:
            raise SourceError(f"{path}: labels must be 1-D, got dimensions {shape}")
        if array.size and array.max() >= num_classes:
            bad = int(np.argmax(array >= num_classes))
            raise SourceError(f"{path}: label {array[bad]} at index {bad} is out of range 0..{num_classes - 1}")
    return array


def read_idx(path: Path, *, sha256: str | None = None, num_classes: int | None = None) -> np.ndarray:
    """Read a gzipped or raw IDX file; verify its decoded sha256 when given."""
    path = Path(path)
    data = read_decoded(path)
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise SourceError(f"{path}: sha256 of decoded content is {got[:16]}..., expected {sha256[:16]}...")
    return parse_idx(data, path, num_classes=num_classes)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: cached per process
class MnistSource:
    """Decoded MNIST digits: `train_*` are MNIST's 60k training digits, `test_*` its 10k test digits."""

    name: str  # "mnist" or "sample"
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray  # (M, 28, 28) uint8
    test_labels: np.ndarray  # (M,) uint8
    checksums: dict  # file name -> sha256 of decoded content


def _read_set(directory: Path, files: tuple[SourceFile, ...], name: str) -> MnistSource:
    arrays = {}
    for f in files:
        path = directory / f"{f.name}.gz"
        if not path.exists() and (directory / f.name).exists():
            path = directory / f.name
        arrays[f.name] = read_idx(path, sha256=f.sha256, num_classes=10 if "labels" in f.name else None)
    tr_i, tr_l, te_i, te_l = (arrays[f.name] for f in files)
    for images, labels, split in ((tr_i, tr_l, "train"), (te_i, te_l, "test")):
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise SourceError(f"{directory}: {split} images {images.shape} and labels {labels.shape} disagree")
    return MnistSource(name, tr_i, tr_l, te_i, te_l, {f.name: f.sha256 for f in files})


def sample_files() -> tuple[SourceFile, ...]:
    sums = resources.files("pipelines") / "data" / "SHA256SUMS.txt"
    out = []
    for line in sums.read_text().splitlines():
        digest, size, name = line.split()
        out.append(SourceFile(name, digest, int(size)))
    order = [f.name for f in MNIST_FILES]
    return tuple(sorted(out, key=lambda f: order.index(f.name)))


def load_mnist(source: str = "mnist", directory: str | None = None) -> MnistSource:
    """Load and verify MNIST: `source="mnist"` from the cache (or `directory`), `"sample"` embedded.

    Cached per process and folder, so each dask worker decodes the files once.
    """
    if source == "sample":
        return _load_verified("sample", str(resources.files("pipelines") / "data"))
    if source != "mnist":
        raise SourceError(f"unknown MNIST source {source!r} (expected 'mnist' or 'sample')")
    return _load_verified("mnist", str(Path(directory) if directory else mnist_cache_dir()))


@functools.lru_cache(maxsize=4)
def _load_verified(source: str, directory: str) -> MnistSource:
    if source == "sample":
        return _read_set(Path(directory), sample_files(), "sample")
    root = Path(directory)
    missing = [f.name for f in MNIST_FILES if not (root / f"{f.name}.gz").exists() and not (root / f.name).exists()]
    if missing:
        raise SourceError(
            f"{root}: MNIST source files missing ({', '.join(missing)}); run `visatt-data fetch mnist` "
            "(or `visatt-data fetch mnist --from DIR` with local copies), or use `--source sample`"
        )
    return _read_set(root, MNIST_FILES, "mnist")


def _verify_into(src: Path, f: SourceFile, dest_dir: Path) -> Path:
    """Verify `src` against `f` and copy it (atomically) into `dest_dir` as `<name>.gz`."""
    data = read_decoded(src)
    got = hashlib.sha256(data).hexdigest()
    if len(data) != f.size or got != f.sha256:
        raise SourceError(
            f"{src}: decoded content ({len(data)} bytes, sha256 {got[:16]}...) does not match "
            f"{f.name} ({f.size} bytes, sha256 {f.sha256[:16]}...)"
        )
    parse_idx(data, src, num_classes=10 if "labels" in f.name else None)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{f.name}.gz"
    with tempfile.NamedTemporaryFile(dir=dest_dir, prefix=f".{f.name}.", delete=False) as tmp:
        try:
            if _is_gzip(src):
                with open(src, "rb") as compressed:
                    shutil.copyfileobj(compressed, tmp)
            else:
                tmp.write(gzip.compress(data, compresslevel=6, mtime=0))
            tmp.close()
            os.replace(tmp.name, dest)
        except BaseException:
            os.unlink(tmp.name)
            raise
    return dest


def import_mnist(from_dir: Path, dest_dir: Path | None = None) -> list[Path]:
    """Verify local MNIST files (`<name>.gz` or raw `<name>`) and copy them into the cache."""
    from_dir, dest_dir = Path(from_dir), Path(dest_dir or mnist_cache_dir())
    out = []
    for f in MNIST_FILES:
        candidates = [from_dir / f"{f.name}.gz", from_dir / f.name]
        src = next((c for c in candidates if c.exists()), None)
        if src is None:
            raise SourceError(f"{from_dir}: {f.name}.gz (or {f.name}) not found")
        out.append(_verify_into(src, f, dest_dir))
    return out


def _download(url: str, dest: Path, *, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


MNIST_HINT = ("Copy the four files from elsewhere and use `visatt-data fetch mnist --from DIR`, or build offline "
              "from the sample shipped in the package with `--source sample`.")


def fetch_mnist(
    dest_dir: Path | None = None,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
    *,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    log=print,
) -> list[Path]:
    """Download the four MNIST files, trying each mirror with `retries` attempts, and verify them.

    A file already in the cache with the right checksum is not downloaded again.
    """
    dest_dir = Path(dest_dir or mnist_cache_dir())
    with new_folders(dest_dir):
        return _fetch_files(dest_dir, mirrors, retries, timeout, backoff, log)


def _fetch_files(dest_dir: Path, mirrors, retries, timeout, backoff, log) -> list[Path]:
    out = []
    for f in MNIST_FILES:
        cached = dest_dir / f"{f.name}.gz"
        if cached.exists():
            try:
                read_idx(cached, sha256=f.sha256)
                out.append(cached)
                log(f"{f.name}: already in {dest_dir}, verified")
                continue
            except SourceError:
                pass  # corrupt cache entry: download again
        errors = {}
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{f.name}.gz"
            for attempt in range(retries):
                with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
                    part = Path(tmp) / f"{f.name}.gz"
                    try:
                        _download(url, part, timeout=timeout)
                        out.append(_verify_into(part, f, dest_dir))
                        log(f"{f.name}: downloaded from {url}, verified")
                        break
                    except (urllib.error.URLError, OSError, SourceError) as e:
                        errors[url] = str(e)
                        if attempt + 1 < retries:
                            time.sleep(backoff * 2**attempt)
            else:
                continue
            break
        else:
            raise SourceError(mirrors_failed(f.name, errors, MNIST_HINT))
    return out
