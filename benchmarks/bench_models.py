"""Training throughput (images/s) of RAM, STN and the CNN baseline on the current Keras backend.

    .venv/bin/python benchmarks/bench_models.py                      # TensorFlow (default)
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_models.py
    .venv/bin/python benchmarks/bench_models.py --models ram --jit off --steps 30

Each model trains on random uint8 canvases (default 100x100x1, batch 128) with Adam via
`train_on_batch`; the first `--warmup` steps (tracing, compilation) are not timed, then
`--steps` steps are, and the median of `--repeats` timed runs is reported. RAM uses the
100x100 setting of the paper: 8 glimpses, 4 scales of 12x12 (preset `paper-100`,
`--core lstm` for the seed article's LSTM core). Multi-digit models: bench_sequence.py.

`--jit auto` is Keras' own default (what `compile()` gives without the argument: XLA off
for TensorFlow on CPU, on for JAX); `on`/`off` force it. Other processes sharing the CPU lower
the numbers: run it more than once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import keras
import numpy as np


def build(name: str, core: str, size: int):
    from visatt_models import registry

    def preset(model, preset, **fields):
        spec = registry.get_model_spec(model)
        return spec.model_cls(registry.make_config(spec, preset=preset, **fields))

    if name == "ram":
        model = preset("ram", "paper-100", core=core)
        c = model.config
        return model, f"RAM {c.glimpses} glimpses, {c.scales} x {c.patch_size}px, {core}"
    if name == "stn":
        return preset("stn", None), "STN (default STNConfig)"
    if name == "cnn":
        return preset("cnn", "seed"), "CNN (preset seed)"
    raise ValueError(f"unknown model {name!r}")


def throughput(model, jit, batch_size, size, warmup, steps, repeats, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8)  # (B, H, W, 1)
    labels = rng.integers(0, 10, batch_size).astype(np.int32)  # (B,)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)
    start = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    warm = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            logs = model.train_on_batch(images, labels, return_dict=True)
        float(logs["loss"])  # make sure the last step has finished
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates), rates, warm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ram", "stn", "cnn"], choices=["ram", "stn", "cnn"])
    parser.add_argument("--core", default="rnn", choices=["rnn", "lstm"], help="RAM core network")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=100, help="canvas side (pixels)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args(argv)

    print(f"backend={keras.backend.backend()} keras={keras.__version__} cpus={os.cpu_count()} "
          f"batch={args.batch_size} input={args.size}x{args.size}x1 uint8 --jit {args.jit}")
    for name in args.models:
        model, label = build(name, args.core, args.size)
        jit = {"auto": "auto", "on": True, "off": False}[args.jit]
        rate, rates, warm = throughput(model, jit, args.batch_size, args.size, args.warmup,
                                       args.steps, args.repeats)
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"{name}: {rate:8.0f} images/s  (median of [{runs}]; warm-up {warm:.1f}s; "
              f"jit_compile={model.jit_compile})  {label}")


if __name__ == "__main__":
    main()
