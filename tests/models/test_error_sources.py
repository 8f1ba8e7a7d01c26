"""benchmarks/error_sources.py: replaying a sequences store's source digits, and counting misreads by digit."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import zarr

from stores import tiny_store

_spec = importlib.util.spec_from_file_location(
    "error_sources", Path(__file__).resolve().parents[2] / "benchmarks" / "error_sources.py")
error_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(error_sources)


def test_the_replay_finds_each_samples_own_digit_and_the_stored_labels(tmp_path):
    store = tiny_store(tmp_path / "sequences.zarr", name="mnist-sequences", limit=40, canvas=64)
    group = zarr.open_group(str(store), mode="r")["train"]
    lengths = group["lengths"][:]
    digits = error_sources.source_digits(store, "train")  # checked against the stored labels inside
    assert digits.shape == (40, 5)
    assert ((digits >= 0) == (np.arange(5)[None, :] < lengths[:, None])).all()
    assert (digits == np.arange(40)[:, None]).any(axis=1).all()  # sample i holds source digit i
    assert len(np.unique(digits[digits >= 0])) > 40  # and others
    pairs = tiny_store(tmp_path / "pairs.zarr", name="mnist-pairs", limit=8, canvas=84)
    with pytest.raises(SystemExit, match="the replay is for mnist-sequences"):
        error_sources.source_digits(pairs, "train")


def test_misreads_are_counted_by_source_digit():
    labels = np.array([[1, 2, 10], [1, 3, 10], [2, 4, 10], [5, 10, 10]])
    lengths = np.array([2, 2, 2, 1])
    digits = np.array([[0, 1, -1], [0, 2, -1], [1, 3, -1], [4, -1, -1]])
    predicted = np.array([[7, 2, 10], [7, 3, 10], [2, 9, 10], [5, 5, 10]])  # the last: a digit too many
    misread = error_sources.misread_slots(predicted, labels, lengths)
    assert misread.tolist() == [[True, False, False], [True, False, False], [False, True, False], [False, False, False]]
    counts = error_sources.by_source(misread, digits)
    # Digit 0 is misread in both its strips, digit 3 in its only one; digit 1 never.
    assert {k: v for k, v in counts.items() if k != "misread"} == {
        "slots": 3, "digits": 2, "always": 2, "always_slots": 3, "twice": 1, "twice_slots": 2, "sequences_on_always": 3}
    assert counts["misread"] == {0, 3}
    misread[2, 0] = True  # digit 1, right in the first strip, now misread in the third
    counts = error_sources.by_source(misread, digits)
    assert counts["always"] == 2 and counts["sequences_on_always"] == 2  # the third strip has a misread on digit 1
