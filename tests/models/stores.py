"""Tiny stores for the model tests, built by the data side's own builder from its embedded sample.

`build_dataset(..., source="sample")` uses the small real MNIST sample shipped in `pipelines`,
so the tests need no download and exercise the real store layout and attributes.
"""

from pathlib import Path

from pipelines.build import build_dataset


def tiny_store(path: Path, *, name: str = "mnist-cluttered", limit: int = 64, canvas: int = 40, **options) -> Path:
    """A store of `name` with at most `limit` samples per split on a `canvas` x `canvas` canvas."""
    return build_dataset(name, path, source="sample", limit=limit, canvas=canvas, workers=1, progress=False, **options)
