"""Batches gathered ahead in background threads (`Batches(prefetch=N)`, what visatt-train uses)
against none, on a real store: `model.fit` images/s in one process, the variants alternating.

    .venv/bin/python benchmarks/bench_prefetch.py --store sample60.zarr            # TensorFlow
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_prefetch.py --store sample60.zarr

The smaller the step, the more gathering a numpy batch (indexing the split, cropping) shows:
RAM at a small batch on the CPU here; on a GPU, RAM's step is about a millisecond.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras

from pipelines.batches import Batches
from pipelines.reader import Split, open_store
from visatt_models import registry
from visatt_models.tasks import DigitTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a single-digit store, e.g. mnist-cluttered-60")
    parser.add_argument("--model", default="ram:visatt-60", help="NAME[:PRESET]")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--prefetch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    split = Split(open_store(args.store), "train")
    name, _, preset = args.model.partition(":")
    spec = registry.get_model_spec(name)
    model = spec.model_cls(registry.make_config(spec, preset=preset or None), DigitTask())
    model.compile(optimizer=keras.optimizers.Adam(1e-3))

    def images_per_s(prefetch: int) -> float:
        batches = Batches(split, args.batch_size, shuffle=True, drop_remainder=True, endless=True, prefetch=prefetch)
        t0 = time.perf_counter()
        model.fit(batches, epochs=1, steps_per_epoch=args.steps, verbose=0)
        return args.batch_size * args.steps / (time.perf_counter() - t0)

    images_per_s(0), images_per_s(args.prefetch)  # tracing and compilation
    runs = {0: [], args.prefetch: []}
    for _ in range(args.repeats):
        for prefetch in runs:
            runs[prefetch].append(images_per_s(prefetch))
    base, ahead = statistics.median(runs[0]), statistics.median(runs[args.prefetch])
    print(f"{keras.backend.backend()} {args.model} batch {args.batch_size}: no prefetch {base:.0f} images/s, "
          f"prefetch {args.prefetch} {ahead:.0f} images/s ({ahead / base:.2f}x; median of {args.repeats})")


if __name__ == "__main__":
    main()
