"""How fast the training loader (`pipelines.batches.Batches`) makes batches under each
augmentation, on a real store: what a GPU run is held to when its step is faster.

    .venv/bin/python benchmarks/bench_loader.py --store /tmp/stores/mnist-sequences.zarr
    .venv/bin/python benchmarks/bench_loader.py --store /tmp/stores/mnist-sequences.zarr --threads 1 2
    .venv/bin/python benchmarks/bench_loader.py --store /tmp/stores/mnist-pairs.zarr --recipes plain reposition

`--threads 1 2`: each recipe also with its batches asked for by two threads at once, in order,
as the trainer's prefetching (Keras' ordered enqueuer, two workers) asks. The variants take
turns in each timed round (after one uncounted round), so a drift of the machine's speed hits
them alike; each prints the median images/s over the rounds, their range, and the ratio to the
plain loader (reading and shuffling only) in one thread, timed in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from pipelines.batches import Batches
from pipelines.reader import Split, open_store

RECIPES = {
    "plain": {},
    "shift": {"shift": 8},
    "keep-ink": {"shift": 8, "keep_ink": True},
    "permute": {"shift": 8, "keep_ink": True, "permute": True},  # the mnist-sequences recipe of the results
    "affine": {"shift": 8, "keep_ink": True, "permute": True, "rotate": 8.0, "shear": 0.15},
    "reposition": {"reposition": True},  # mnist-pairs only
}


def images_per_s(batches: Batches, count: int, first: int, threads: int) -> float:
    t0 = time.perf_counter()
    if threads == 1:
        for i in range(first, first + count):
            batches[i]
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(batches.__getitem__, range(first, first + count)):
                pass
    return count * batches.batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a store folder (or any location the readers take)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["plain", "keep-ink", "permute", "affine"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="threads asking for batches at once")
    args = parser.parse_args()
    split = Split(open_store(args.store), "train")
    recipes = list(dict.fromkeys(["plain", *args.recipes]))
    variants = [(r, t) for r in recipes for t in dict.fromkeys([1, *args.threads])]
    loaders = {v: Batches(split, args.batch_size, shuffle=True, drop_remainder=True, endless=True, **RECIPES[v[0]])
               for v in variants}
    runs = {v: [] for v in variants}
    for round_ in range(args.repeats + 1):
        for v in variants:
            rate = images_per_s(loaders[v], args.batches, round_ * args.batches, v[1])
            if round_:  # the first round reads the split and draws the epoch's augmentation
                runs[v].append(rate)
    base = statistics.median(runs[("plain", 1)])
    print(f"{args.store} train, batch {args.batch_size}, {args.batches} batches x {args.repeats} rounds:")
    for (r, t), rates in runs.items():
        rate = statistics.median(rates)
        print(f"  {r:<11} {t} thread{'s' if t > 1 else ' '} {rate:>9,.0f} images/s ({min(rates):,.0f}-{max(rates):,.0f}), "
              f"{rate / base:.3f}x plain, {1000 * args.batch_size / rate:.1f} ms a batch")


if __name__ == "__main__":
    main()
