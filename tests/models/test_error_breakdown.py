"""benchmarks/error_breakdown.py on crafted predictions: lengths, order-only errors, gap buckets."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "error_breakdown", Path(__file__).resolve().parents[2] / "benchmarks" / "error_breakdown.py")
error_breakdown = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(error_breakdown)

B = 10  # blank


def test_breakdown_counts_lengths_order_and_gaps():
    labels = np.array([[1, 2, B, B, B], [3, 4, B, B, B], [5, B, B, B, B], [6, 7, 8, B, B]])
    predicted = np.array([[2, 1, B, B, B], [3, 4, B, B, B], [9, B, B, B, B], [6, 7, 8, B, B]])
    lengths = np.array([2, 2, 1, 3])
    boxes = np.zeros((4, 5, 4), np.int32)
    boxes[0, :2, 1] = [10, 11]  # left edges 1 px apart: swapped (order only)
    boxes[1, :2, 1] = [10, 40]  # 30 px: right
    boxes[3, :3, 1] = [0, 2, 30]  # closest pair 2 px apart: right
    lines = error_breakdown.breakdown(predicted, labels, lengths, boxes)
    assert lines[0] == "all: n=4 error=0.5000 order only=0.2500"
    assert lines[1] == "length 1: n=1 error=1.0000 share of errors=0.50"
    assert lines[2] == "length 2: n=2 error=0.5000 share of errors=0.50"
    assert lines[3] == "length 3: n=1 error=0.0000 share of errors=0.00"
    gaps = lines[4:]
    assert [line.split(":")[0] for line in gaps] == [
        "closest left edges 1 px apart", "closest left edges 2 px apart", "closest left edges >= 6 px apart"]
    assert "n=1 (25.00% of all) error=1.0000 order only=1.0000 share of errors=0.50" in gaps[0]
    assert "error=0.0000" in gaps[1] and "error=0.0000" in gaps[2]


def test_predictions_with_a_sixth_column_are_scored_against_blanks_there():
    """DRAM's end-of-sequence step and the ctc head's sixth column: a digit there is wrong."""
    labels = np.array([[1, 2, B, B, B], [3, B, B, B, B]])
    predicted = np.array([[1, 2, B, B, B, B], [3, B, B, B, B, 4]])
    lines = error_breakdown.breakdown(predicted, labels, np.array([2, 1]), np.zeros((2, 5, 4), np.int32))
    assert lines[0] == "all: n=2 error=0.5000 order only=0.0000"


def test_gap_buckets_edges():
    """0 px, and 5 px against 6 px: the edges of the 3-5 and >= 6 buckets."""
    labels = np.array([[1, 2, B, B, B]] * 3)
    lengths = np.full(3, 2)
    boxes = np.zeros((3, 5, 4), np.int32)
    boxes[:, 0, 1] = 20
    boxes[:, 1, 1] = [20, 25, 14]  # 0, 5 and 6 px apart
    lines = error_breakdown.breakdown(labels.copy(), labels, lengths, boxes)[2:]
    assert [line.split(":")[0] for line in lines] == [
        "closest left edges 0 px apart", "closest left edges 3-5 px apart", "closest left edges >= 6 px apart"]
    assert all("n=1 " in line for line in lines)
