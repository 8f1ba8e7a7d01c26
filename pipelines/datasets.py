"""The named datasets: each a family (how to generate), default options and a version.

A version names the bytes: patch releases keep the data identical, a major bump means the data
changed. Frozen versions (their recipe and array digests) are in `datasets.lock`.
"""

from __future__ import annotations

import dataclasses

from pipelines.mnist import MnistCanvasFamily
from pipelines.sequences import PAIRS, SEQUENCES
from pipelines.svhn import SvhnFamily


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    family: object
    version: str
    defaults: dict
    description: str
    release_notes: dict  # version -> what changed


_MNIST = MnistCanvasFamily()
_SVHN = SvhnFamily()
_FIRST = {"1.0.0": "First release."}

DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "mnist-translated", _MNIST, "1.0.0", dict(canvas=100, clutter_count=0),
            "MNIST digit at a random position of a 100x100 canvas (seed article's canvas).", _FIRST,
        ),
        DatasetSpec(
            "mnist-cluttered", _MNIST, "1.0.0", dict(canvas=100, clutter_count=8, clutter_size=9),
            "100x100, 8 clutter crops of 9x9 from other digits of the split (seed article).", _FIRST,
        ),
        DatasetSpec(
            "mnist-translated-60", _MNIST, "1.0.0", dict(canvas=60, clutter_count=0),
            "60x60 translated MNIST (Mnih et al. 2014).", _FIRST,
        ),
        DatasetSpec(
            "mnist-cluttered-60", _MNIST, "1.0.0", dict(canvas=60, clutter_count=4, clutter_size=8),
            "60x60, 4 clutter crops of 8x8 (Mnih et al. 2014).", _FIRST,
        ),
        DatasetSpec(
            "mnist-cluttered-100", _MNIST, "1.0.0", dict(canvas=100, clutter_count=8, clutter_size=8),
            "100x100, 8 clutter crops of 8x8 (Mnih et al. 2014).", _FIRST,
        ),
        DatasetSpec(
            "mnist-sequences", SEQUENCES, "1.0.0", dict(canvas=64),
            "1-5 MNIST digits of a split laid out like a house number, fitted onto 64x64; SVHN's labels.",
            _FIRST,
        ),
        DatasetSpec(
            "mnist-pairs", PAIRS, "1.0.0", dict(canvas=100),
            "Two MNIST digits anywhere on 100x100, labels in reading order (Ba et al. 2015).", _FIRST,
        ),
        DatasetSpec(
            "svhn", _SVHN, "1.0.0", dict(size=32, expand=0.0, eval_crop=True),
            "SVHN format 1: digit-box union, 32x32 grayscale, eval splits cropped too (seed article).", _FIRST,
        ),
        DatasetSpec(
            "svhn-64", _SVHN, "1.0.0", dict(size=64, expand=0.3, eval_crop=True),
            "SVHN format 1: Goodfellow et al. 2013's crop (union box +30%, centred) at 64x64; grayscale.", _FIRST,
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
