"""The named datasets: each a family (how to generate), default options and a version.

A version names the bytes: patch releases keep the data identical, a major bump means the data
changed. Frozen versions (their recipe and array digests) are in `datasets.lock`.
"""

from __future__ import annotations

import dataclasses

from pipelines.mnist import MnistCanvasFamily


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    family: object
    version: str
    defaults: dict
    description: str
    release_notes: dict  # version -> what changed


_MNIST = MnistCanvasFamily()
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
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
