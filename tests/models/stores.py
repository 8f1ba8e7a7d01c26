"""Helpers of the model tests: tiny stores built by the data side's own builder from its embedded sample, and CLI runs.

`build_dataset(..., source="sample")` uses the small real MNIST sample shipped in `pipelines`,
so the tests need no download and exercise the real store layout and attributes.
"""

from pathlib import Path

from pipelines.build import build_dataset


def tiny_store(path: Path, *, name: str = "mnist-cluttered", limit: int = 64, canvas: int = 40, **options) -> Path:
    """A store of `name` with at most `limit` samples per split on a `canvas` x `canvas` canvas."""
    return build_dataset(name, path, source="sample", limit=limit, canvas=canvas, workers=1, progress=False, **options)


def run(command, args, ok=True):
    """Invoke a click command with `args` (made strings); with ok, assert it exited 0."""
    from click.testing import CliRunner

    result = CliRunner().invoke(command, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result
