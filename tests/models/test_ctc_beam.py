"""benchmarks/ctc_beam.py's beam decoding on crafted frames."""

import importlib.util
from pathlib import Path

import numpy as np

from visatt_models.tasks import SequenceTask, decode_numpy

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ctc_beam", ROOT / "benchmarks" / "ctc_beam.py")
ctc_beam = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ctc_beam)


def _frames(rows):
    """Frame log-probabilities (1, T, 11) from {class: probability} per frame, the rest spread evenly."""
    out = np.empty((1, len(rows), 11))
    for t, row in enumerate(rows):
        rest = (1 - sum(row.values())) / (11 - len(row))
        out[0, t] = [row.get(k, rest) for k in range(11)]
    return np.log(out)


def test_beam_search_finds_the_labelling_that_the_best_path_misses():
    task = SequenceTask(head="ctc")
    # Blank is each frame's best (0.4), but "1" has 0.35^2 + 2 * 0.35 * 0.4 = 0.40 of the mass
    # against the empty labelling's 0.16.
    frames = _frames([{10: 0.4, 1: 0.35}, {10: 0.4, 1: 0.35}])
    assert decode_numpy(task, {"ctc_logits": frames}).tolist() == [[10] * 6]
    assert ctc_beam.beam_decode(task, frames, 8).tolist() == [[1, 10, 10, 10, 10, 10]]
    # Seven confident digits: the first six kept (a sixth digit makes the prediction wrong).
    seven = _frames([{d: 0.9} for d in (3, 1, 4, 1, 5, 9, 2)])
    assert ctc_beam.beam_decode(task, seven, 8).tolist() == [[3, 1, 4, 1, 5, 9]]
