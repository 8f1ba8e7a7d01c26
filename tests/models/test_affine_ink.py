"""benchmarks/affine_ink.py on a tiny store: the share of ink that --rotate and --shear keep."""

import subprocess
import sys
from pathlib import Path

from stores import tiny_store

ROOT = Path(__file__).resolve().parents[2]


def test_affine_ink_reports_the_ink_kept(tmp_path):
    store = tiny_store(tmp_path / "sequences.zarr", name="mnist-sequences", limit=40, canvas=64)
    done = subprocess.run([sys.executable, ROOT / "benchmarks" / "affine_ink.py", "--store", store, "--rotate", "10"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "mnist-sequences train (the first 40 images with ink), rotate 10 shear 0.15: ink kept mean 0.9" in done.stdout
