"""Fixtures of the data-side tests: the real MNIST files (`mnist_dir`, tests/conftest.py)
imported once into a session cache."""

from pathlib import Path

import pytest

from pipelines import sources


@pytest.fixture(scope="session")
def session_home(tmp_path_factory, mnist_dir) -> Path:
    """A $VISATT_HOME whose cache holds the verified real MNIST files."""
    home = tmp_path_factory.mktemp("visatt-home")
    sources.import_mnist(mnist_dir, home / "sources" / "mnist")
    return home


@pytest.fixture
def home(session_home, monkeypatch) -> Path:
    monkeypatch.setenv("VISATT_HOME", str(session_home))
    return session_home


@pytest.fixture
def empty_lock(tmp_path, monkeypatch) -> Path:
    """An empty lock file, so tests never write the checkout's datasets.lock."""
    path = tmp_path / "datasets.lock"
    path.write_text('{"datasets": {}, "format": 1}\n')
    monkeypatch.setenv("VISATT_LOCK", str(path))
    return path
