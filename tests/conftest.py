"""Where the tests find the real data that is too large for the repository.

Tests that need the full real MNIST or the real SVHN format-1 sample take them from
`$VISATT_TEST_SOURCES` (a folder holding `mnist/` and `svhn-format1-sample/`), by default
`../shared/sources` beside the checkout, which is where CI provides them. Elsewhere (a fresh
clone) they skip, saying how to provide the files; with `VISATT_REQUIRE_SOURCES=1` (set by CI)
a missing folder fails the test instead, so CI can never pass by skipping them.
"""

import os
from pathlib import Path

import pytest

# XLA's CPU backend spends most of a JAX test's time optimising small programs that then run
# once or twice: the tests compile them without LLVM's optimisations, which made the JAX pass
# about 1.5 times faster (862 s -> 566 s on a busy 2-core machine). (TensorFlow does not use XLA on a CPU.)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

SOURCES = Path(os.environ.get("VISATT_TEST_SOURCES") or Path(__file__).resolve().parents[2] / "shared" / "sources")
MNIST_DIR = SOURCES / "mnist"
SVHN_SAMPLE = SOURCES / "svhn-format1-sample"


def require(path: Path, marker: str, what: str) -> Path:
    """`path` if `path / marker` exists; else skip (or fail under VISATT_REQUIRE_SOURCES=1)."""
    if (path / marker).exists():
        return path
    reason = (f"{what} not found at {path}: set VISATT_TEST_SOURCES to a folder holding mnist/ (the four IDX .gz "
              f"files and SHA256SUMS) and svhn-format1-sample/ (train/ and test/ with digitStruct.mat)")
    if os.environ.get("VISATT_REQUIRE_SOURCES") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The full real MNIST files."""
    return require(MNIST_DIR, "SHA256SUMS", "real MNIST")


@pytest.fixture(scope="session")
def svhn_sample() -> Path:
    """The real SVHN format-1 sample (a few images per split with their digitStruct.mat)."""
    return require(SVHN_SAMPLE, "train/digitStruct.mat", "real SVHN format-1 sample")


@pytest.fixture(autouse=True)
def _private_visatt_home(tmp_path_factory, monkeypatch):
    """Every test gets a private $VISATT_HOME unless it sets its own: the suite never writes the
    user's cache (~/.cache/visatt) and never depends on what is in it."""
    if "VISATT_HOME" not in os.environ or not os.environ["VISATT_HOME"].startswith(str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("VISATT_HOME", str(tmp_path_factory.getbasetemp() / "visatt-home-default"))
