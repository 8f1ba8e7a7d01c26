"""benchmarks/sequence_cells.py: the ink that --permute carries across cells or drops."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stores import tiny_store

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sequence_cells", ROOT / "benchmarks" / "sequence_cells.py")
sequence_cells = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sequence_cells)


def test_cell_ink_counts_shared_and_outside_pixels():
    images = np.zeros((2, 20, 20, 1), np.uint8)
    boxes = np.zeros((2, 5, 4), np.int64)
    boxes[0, :2] = [[0, 0, 10, 8], [0, 6, 10, 8]]  # columns 6-7 shared
    images[0, 2, 5:9] = 50  # 2 of these 4 pixels lie in the shared columns
    images[0, 15, 15] = 1  # outside both cells
    boxes[1, 0] = [2, 2, 10, 10]
    images[1, 5, 5] = 9  # inside its only cell
    shared, outside = sequence_cells.cell_ink(images, boxes)
    assert shared.tolist() == [2, 0] and outside.tolist() == [1, 0]
    assert sequence_cells.dropped_ink(images, boxes).tolist() == [1, 0]  # the pixel 5 rows and columns away
    assert sequence_cells.line("x", np.array([2, 0, 4, 0])) == "x: 50.0% of images, 3.0 pixels on average where any"


@pytest.mark.single_backend  # numpy only: nothing of Keras' backend runs
def test_the_script_reads_a_sequences_store_and_refuses_others(tmp_path):
    store = tiny_store(tmp_path / "sequences.zarr", name="mnist-sequences", limit=40, canvas=64)
    done = subprocess.run([sys.executable, ROOT / "benchmarks" / "sequence_cells.py", "--store", store], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "train: 40 images" in done.stdout and "ink where cells overlap: " in done.stdout
    assert "ink that --permute drops: 0.0% of images" in done.stdout
    pairs = tiny_store(tmp_path / "pairs.zarr", name="mnist-pairs", limit=8, canvas=84)
    refused = subprocess.run([sys.executable, ROOT / "benchmarks" / "sequence_cells.py", "--store", pairs], capture_output=True,
                             text=True, cwd=ROOT)
    assert refused.returncode == 1 and "this is a mnist-pairs store" in refused.stderr
