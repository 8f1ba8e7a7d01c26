"""Per-step overhead of the training loop: `model.fit` with and without a per-batch callback.

    .venv/bin/python benchmarks/bench_trainer.py                 # TensorFlow (default)
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_trainer.py
    .venv/bin/python benchmarks/bench_trainer.py --model ram:visatt-60 --size 60 --steps 200

What it compares, in one process on the same model and batches (ratios, since this machine is
shared and noisy):

    per-batch hook   a callback with `on_train_batch_end` that reads the step's logs, as the run
                     recorder had before: Keras then turns off its asynchronous callback
                     dispatch and brings every metric to the host after every step;
    epoch only       `visatt_models.train.RunRecorder`'s way (no per-batch hook): what
                     visatt-train does now;
    epoch only, steps_per_execution=N
                     several steps per compiled call (`compile(steps_per_execution=N)`).

Each variant runs `--repeats` fits of `--steps` steps on random uint8 images after a warm-up
fit (tracing/compilation); the median images/s is printed with its ratio to the per-batch hook.
The smaller the model's step, the more the per-step overhead shows (RAM's step is the
smallest; on a GPU it is about a millisecond).
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np

from visatt_models import registry
from visatt_models.tasks import DigitTask


class PerBatchHook(keras.callbacks.Callback):
    """Reads the logs after every step, as a progress or timing callback would."""

    def on_train_batch_end(self, batch, logs=None):
        self.last = {k: float(v) for k, v in (logs or {}).items()}


class EpochOnly(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.last = dict(logs or {})


def build(name_preset: str, steps_per_execution: int):
    name, _, preset = name_preset.partition(":")
    spec = registry.get_model_spec(name)
    model = spec.model_cls(registry.make_config(spec, preset=preset or None), DigitTask())
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=steps_per_execution)
    return model


def images_per_s(model, images, labels, batch_size, steps, callback, repeats) -> float:
    n = batch_size * steps
    fit = dict(batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    model.fit(images[:n], labels[:n], **fit)  # tracing and compilation
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(images[:n], labels[:n], **fit)
        runs.append(n / (time.perf_counter() - start))
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ram:visatt-60", help="name:preset from the registry")
    parser.add_argument("--size", type=int, default=60, help="image side")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-per-execution", type=int, default=8)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    images = rng.integers(0, 256, (n, args.size, args.size, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    print(f"backend={keras.backend.backend()} keras={keras.__version__} model={args.model} "
          f"{args.size}x{args.size} batch={args.batch_size} steps={args.steps}")
    variants = [("per-batch hook", 1, PerBatchHook()), ("epoch only", 1, EpochOnly()),
                (f"epoch only, steps_per_execution={args.steps_per_execution}", args.steps_per_execution, EpochOnly())]
    base = None
    for label, spe, callback in variants:
        keras.utils.set_random_seed(0)
        speed = images_per_s(build(args.model, spe), images, labels, args.batch_size, args.steps, callback, args.repeats)
        base = base or speed
        print(f"{label:<40} {speed:10.1f} images/s  {speed / base:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
