"""DRAM's loop over emission groups: `--set emission_loop=scan` (`ops.scan`) against the unrolled
Python loop (the default), in one process.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_dram_loop.py
    .venv/bin/python benchmarks/bench_dram_loop.py --stores mnist-pairs --preset paper

For each store's input (mnist-pairs: 100x100, 3 emissions; mnist-sequences: 64x64, 6) and each
loop, a fresh `--preset` DRAM is compiled with Adam and trained with `train_on_batch` on random
images and 1-5 digit labels: the first step (tracing and compilation, the part that grows with
the unrolled graph) and the median of `--repeats` timed runs of `--steps` steps after it are
reported, with scan's figures as ratios to the unrolled loop's. The two loops alternate, in
`--rounds` rounds, so a drift of this shared machine's load hits both; the median over rounds
is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras

from bench_sequence import STORES, batch, timed_rate, warm_up
from visatt_models import registry
from visatt_models.tasks import SequenceTask

EMISSIONS = {"mnist-pairs": 3, "mnist-sequences": 6}


def measure(preset: str, size: int, emissions: int, loop: str, batch_size: int, steps: int, repeats: int):
    """(first step s, steady images/s) of a fresh DRAM with the given loop."""
    spec = registry.get_model_spec("dram")
    keras.utils.set_random_seed(0)
    config = registry.make_config(spec, preset=preset, emissions=emissions, emission_loop=loop)
    images, labels = batch(batch_size, size)
    model = spec.model_cls(config, SequenceTask())
    start = time.perf_counter()
    warm_up(model, images, labels, 1)
    first = time.perf_counter() - start
    return first, statistics.median(timed_rate(model, images, labels, steps) for _ in range(repeats))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=list(EMISSIONS), choices=list(EMISSIONS))
    parser.add_argument("--preset", default="visatt-small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"backend {keras.backend.backend()}, DRAM --preset {args.preset}, batch {args.batch_size}")
    for store in args.stores:
        results = {"unrolled": [], "scan": []}
        for _ in range(args.rounds):
            for loop in results:
                results[loop].append(measure(args.preset, STORES[store], EMISSIONS[store], loop, args.batch_size,
                                             args.steps, args.repeats))
        (u_first, u_rate), (s_first, s_rate) = (
            tuple(statistics.median(r[i] for r in results[loop]) for i in (0, 1)) for loop in ("unrolled", "scan"))
        print(f"{store} ({EMISSIONS[store]} emissions): first step unrolled {u_first:.1f} s, scan {s_first:.1f} s "
              f"({s_first / u_first:.2f}x); steady unrolled {u_rate:.0f} images/s, scan {s_rate:.0f} "
              f"({s_rate / u_rate:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
