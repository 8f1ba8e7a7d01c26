"""The IDX reader, decoded checksums, the cache, and `fetch` from real mirrors on loopback."""

import functools
import gzip
import hashlib
import http.server
import shutil
import threading

import numpy as np
import pytest

from pipelines import sources
from pipelines.sources import MNIST_FILES, SourceError, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_reads_the_real_files_and_their_checksums(mnist_dir):
    sums = {line.split()[2]: line.split()[0] for line in (mnist_dir / "SHA256SUMS").read_text().splitlines()}
    for f in MNIST_FILES:
        assert sums[f.name] == f.sha256  # the pinned checksums are the shared decoded-content ones
    images = read_idx(mnist_dir / "train-images-idx3-ubyte.gz", sha256=MNIST_FILES[0].sha256)
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", num_classes=10)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert 0 < images.mean() < 255 and len(np.unique(images)) > 2  # grey levels, not binarised


def test_raw_and_gzipped_give_the_same_array(tmp_path):
    array = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    (tmp_path / "raw").write_bytes(idx_bytes(array))
    (tmp_path / "raw.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "raw"), read_idx(tmp_path / "raw.gz"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad IDX magic number"),
        (lambda b: b[:-7], "does not match dimensions"),
        (lambda b: b[:4] + (3).to_bytes(4, "big") + b[8:], "does not match dimensions"),
        (lambda b: b[:10], "truncated IDX header"),
    ],
    ids=["wrong-magic", "truncated", "dimension-mismatch", "truncated-header"],
)
def test_malformed_images_give_one_line_errors_naming_the_file(tmp_path, mutate, message):
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(mutate(idx_bytes(np.zeros((2, 28, 28))))))
    with pytest.raises(SourceError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_label_out_of_range(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.array([1, 2, 11, 3])))
    with pytest.raises(SourceError, match=r"label 11 at index 2 is out of range 0..9"):
        read_idx(path, num_classes=10)


def test_wrong_checksum_and_truncated_gzip(tmp_path, mnist_dir):
    labels = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(SourceError, match="sha256 of decoded content"):
        read_idx(labels, sha256="0" * 64)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(labels.read_bytes()[:1000])
    with pytest.raises(SourceError, match=f"{cut}: cannot decompress"):
        read_idx(cut)


def test_recompressed_file_verifies_by_content(mnist_dir, tmp_path):
    # train-images in ../shared was re-compressed: its .gz md5 is not the official one.
    gz = (mnist_dir / "train-images-idx3-ubyte.gz").read_bytes()
    assert hashlib.md5(gz).hexdigest() != "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    cached = sources.import_mnist(mnist_dir, tmp_path / "cache")
    assert [p.name for p in cached] == [f"{f.name}.gz" for f in MNIST_FILES]


def test_import_refuses_a_file_with_other_content(mnist_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(mnist_dir, src)
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(10000))))
    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte.gz: decoded content .* does not match"):
        sources.import_mnist(src, tmp_path / "cache")
    assert not (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").exists()


def test_missing_sources_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VISATT_HOME", str(tmp_path))
    with pytest.raises(SourceError, match="visatt-data fetch mnist"):
        sources.load_mnist("mnist")


def test_sample_is_the_first_digits_of_the_real_files(mnist_dir):
    sample = sources.load_mnist("sample")
    real = sources.load_mnist("mnist", str(mnist_dir))
    n, m = sources.SAMPLE_SIZES["train"], sources.SAMPLE_SIZES["test"]
    np.testing.assert_array_equal(sample.train_images, real.train_images[:n])
    np.testing.assert_array_equal(sample.train_labels, real.train_labels[:n])
    np.testing.assert_array_equal(sample.test_images, real.test_images[:m])
    np.testing.assert_array_equal(sample.test_labels, real.test_labels[:m])


@pytest.fixture
def mirrors(tmp_path, mnist_dir):
    """Two real HTTP servers on loopback: one serves corrupt files, one the real ones."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    shutil.copytree(mnist_dir, good)
    for f in MNIST_FILES:
        (bad / f"{f.name}.gz").write_bytes(gzip.compress(b"not an idx file"))
    servers = []
    for root in (bad, good):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"http://127.0.0.1:{s.server_address[1]}/" for s in servers]
    for s in servers:
        s.shutdown()


def test_fetch_falls_through_dead_and_corrupt_mirrors(mirrors, tmp_path):
    dead = "http://127.0.0.1:9/"  # discard port: connection refused
    log = []
    paths = sources.fetch_mnist(tmp_path / "cache", (dead, *mirrors), retries=2, backoff=0, timeout=5, log=log.append)
    assert len(paths) == 4 and all("downloaded from " + mirrors[1] in line for line in log)
    for f, path in zip(MNIST_FILES, paths):
        assert read_idx(path, sha256=f.sha256).size > 0
    again = []
    sources.fetch_mnist(tmp_path / "cache", (dead,), retries=1, log=again.append)
    assert all("already in" in line for line in again)  # verified cache, no download


def test_fetch_fails_when_every_mirror_fails(mirrors, tmp_path):
    dead = "http://127.0.0.1:9"  # connection refused
    with pytest.raises(SourceError, match="every mirror failed") as failure:
        sources.fetch_mnist(tmp_path / "home" / "cache", (mirrors[0], dead), retries=1, backoff=0, log=lambda s: None)
    message = str(failure.value)
    assert "\n" not in message and f"{mirrors[0]}train-images-idx3-ubyte.gz: " in message
    assert f"{dead}/train-images-idx3-ubyte.gz: " in message  # every mirror, each with its error
    assert "--from DIR" in message and "--source sample" in message
    assert not (tmp_path / "home").exists()  # no empty cache folders left behind
