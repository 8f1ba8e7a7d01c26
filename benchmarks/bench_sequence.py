"""Multi-digit models: training throughput on each sequence store's input, and cost per image.

    .venv/bin/python benchmarks/bench_sequence.py                        # TensorFlow, all stores
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_sequence.py --cost --stores
    .venv/bin/python benchmarks/bench_sequence.py --stores mnist-pairs --models cnn:modern-seq dram:visatt-small
    .venv/bin/python benchmarks/bench_sequence.py --stores mnist-sequences --models cnn:modern-seq-ctc \
        "cnn:modern-seq-ctc:widths=32,64,128,256;rnn=256" --precision float32 mixed_bfloat16

Throughput: each model (`name:preset`, the registry's) trains with Adam via `train_on_batch` on
random uint8 images of a store's input size with 1-5 digit labels (the sequence task, 5
positions; the `ctc` head for a model that makes frames, `pool=columns`, which needs 33 pixels
and so skips svhn's 32x32); `--warmup` steps (tracing, compilation) are not timed, then the median of
`--repeats` timed runs of `--steps` steps is reported in images/s (with the range of the runs)
and as a ratio to the first model of the list, run in the same process, the models taking turns
in each round (this machine is shared and noisy: compare ratios).
Inputs: mnist-sequences 64x64, mnist-pairs 100x100, svhn 32x32, svhn-64 54x54 (the training crop).

Cost (`--cost`, JAX only): parameters and FLOPs of one inference pass per image on 64x64 input
(XLA's cost analysis of the jitted forward pass; a multiply-add counts 2), beside the DRAM
paper's Table 5 figures at 54x54.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import keras
import numpy as np

from visatt_models import registry
from visatt_models.config import PRECISIONS
from visatt_models.tasks import BLANK, SequenceTask

STORES = {"mnist-sequences": 64, "mnist-pairs": 100, "svhn": 32, "svhn-64": 54}
MODELS = ["cnn:seed", "cnn:modern-seq", "cnn:modern-seq-ctc", "stn:st-cnn-single", "ram:visatt-60", "dram:visatt-small"]
PAPER = "DRAM paper, Table 5 (54x54): 10-layer CNN 2.1 GFLOPs / 51M params; single DRAM 0.2 GFLOPs / 14M; " \
        "forward-backward DRAM with MC 0.7 GFLOPs / 28M"


def build(name_preset: str, precision: str = "float32"):
    """The model `name:preset` on the sequence task, with the ctc head if the model makes frames;
    `name:preset:key=value;key=value` sets config fields too (e.g. `cnn:modern-seq-ctc:widths=32,64,128,256;rnn=256`)."""
    name, _, rest = name_preset.partition(":")
    preset, _, overrides = rest.partition(":")
    spec = registry.get_model_spec(name)
    keras.utils.set_random_seed(0)
    config = registry.make_config(spec, preset=preset or None, overrides=overrides.split(";") if overrides else ())
    task = SequenceTask(head="ctc" if spec.model_cls.makes_frames(config) else "independent")
    return spec.model_cls(config, task, dtype=precision)


def batch(batch_size: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8)  # (B, S, S, 1)
    labels = np.full((batch_size, 5), BLANK, np.uint8)  # (B, 5)
    for i, length in enumerate(rng.integers(1, 6, batch_size)):
        labels[i, :length] = rng.integers(0, 10, length)
    return images, labels


def warm_up(model, images, labels, warmup: int) -> None:
    """Compile with Adam and run `warmup` steps (tracing, compilation): not timed."""
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    for _ in range(warmup):
        model.train_on_batch(images, labels)


def timed_rate(model, images, labels, steps: int) -> float:
    """Images/s of `steps` training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        logs = model.train_on_batch(images, labels, return_dict=True)
    float(logs["loss"])  # the last step has finished
    return steps * len(images) / (time.perf_counter() - start)


def throughput(models: dict, images, labels, steps: int, repeats: int) -> dict[str, list[float]]:
    """Images/s of each warmed-up model over `repeats` rounds of `steps` steps, the models taking
    turns within each round, so that a slow spell of this shared machine hits them all alike. A
    first round is not counted: a model's first steps after another model's are slow (TensorFlow)."""
    rates = {label: [] for label in models}
    for round_ in range(repeats + 1):
        for label, model in models.items():
            rate = timed_rate(model, images, labels, steps)
            if round_:
                rates[label].append(rate)
    return rates


def cost(model, size: int) -> tuple[int, float]:
    """(parameters, FLOPs per image) of one inference pass at size x size (JAX backend)."""
    import jax

    images = np.zeros((1, size, size, 1), np.uint8)
    model(images)  # build
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def forward(trainable, frozen, x):
        return model.stateless_call(trainable, frozen, x, training=False)[0]

    analysis = jax.jit(forward).lower(trainable, frozen, images).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return model.count_params(), float(analysis["flops"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="*", default=list(STORES), choices=list(STORES))
    parser.add_argument("--models", nargs="+", default=MODELS,
                        help="name:preset from the registry, optionally :key=value;key=value config fields")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=list(PRECISIONS),
                        help="train each model under each of these dtype policies (mixed_bfloat16: cnn and stn)")
    parser.add_argument("--cost", action="store_true", help="parameters and FLOPs per image at 64x64 (JAX)")
    args = parser.parse_args(argv)

    print(f"backend={keras.backend.backend()} keras={keras.__version__} cpus={os.cpu_count()} batch={args.batch_size}")
    for store in args.stores:
        size = STORES[store]
        images, labels = batch(args.batch_size, size)
        models = {}
        for name in args.models:
            for precision in args.precision:
                label = name if len(args.precision) == 1 else f"{name} {precision}"
                try:
                    model = build(name, precision)
                    model.check_input(model.task, model.config, (size, size, 1))
                except ValueError as e:
                    print(f"{store:16s} {size}x{size}  {label:20s} skipped: {e}")
                    continue
                warm_up(model, images, labels, args.warmup)
                models[label] = model
        rates = throughput(models, images, labels, args.steps, args.repeats)
        base = statistics.median(next(iter(rates.values()))) if rates else None
        for label, values in rates.items():
            rate = statistics.median(values)
            print(f"{store:16s} {size}x{size}  {label:20s} {rate:8.1f} images/s  {rate / base:5.2f}x {next(iter(rates))}"
                  f"  (runs {min(values):.0f}-{max(values):.0f})")
    if args.cost:
        if keras.backend.backend() != "jax":
            raise SystemExit("--cost needs KERAS_BACKEND=jax (XLA's cost analysis)")
        for name in (*args.models, "dram:paper"):
            params, flops = cost(build(name), 64)
            print(f"cost 64x64  {name:20s} {params / 1e6:7.2f}M parameters  {flops / 1e9:7.3f} GFLOPs per image")
        print(PAPER)


if __name__ == "__main__":
    main()
