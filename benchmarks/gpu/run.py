"""One GPU session in one call: build the stores, measure training throughput, train every model.

    bash benchmarks/gpu/device.sh                         # on the GPU machine (see its header)
    .venv/bin/python benchmarks/gpu/run.py --smoke --out /tmp/gpu-smoke     # the same, tiny, on a CPU

Steps (each printed as it goes, everything also written under --out):

1. Stores: builds the datasets the runs need from the MNIST files in `--mnist` (all cores,
   frozen versions checked against datasets.lock), into `--stores`. `--smoke`: from the
   embedded MNIST sample, a few dozen images per split.
2. Throughput (`THROUGHPUT`): training images/s of each model via `model.fit` on random uint8
   images of its input size, after one fit that traces and compiles (its seconds are reported
   too): the same loop `visatt-train` runs (no per-batch callback), on the current Keras
   backend and device.
3. Accuracy (`RUNS`): each run trains with `visatt_models.train.train` into `--runs/NAME`
   within its share of `--train-min` minutes (`time_limit_s`: the session ends after the last
   epoch that fits; the best-val checkpoint is tested; `visatt-train --out DIR --resume`
   continues it anywhere).

Outputs in `--out`: `summary.json` (device, throughput, each run's test figures, epochs, wall
time), `results.tar.gz` (each run folder without checkpoints: run.json, state.json,
metrics.json, log.csv), so that a device call brings back two files. The README's GPU tables
are made from `summary.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's packages, installed or not

# (label, model, preset, task, image side, batch size)
THROUGHPUT = [
    ("RAM paper-100, batch 128", "ram", "paper-100", "digit", 100, 128),
    ("RAM paper-100, batch 1024", "ram", "paper-100", "digit", 100, 1024),
    ("RAM visatt-60", "ram", "visatt-60", "digit", 60, 128),
    ("STN (defaults)", "stn", None, "digit", 60, 128),
    ("CNN seed", "cnn", "seed", "digit", 100, 128),
    ("CNN modern", "cnn", "modern", "digit", 100, 128),
    ("CNN modern-seq", "cnn", "modern-seq", "sequence", 64, 128),
    ("ST-CNN single", "stn", "st-cnn-single", "sequence", 64, 128),
    ("DRAM visatt-small", "dram", "visatt-small", "sequence", 64, 128),
    ("DRAM paper", "dram", "paper", "sequence", 64, 128),
]


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    dataset: str
    model: str
    preset: str | None
    overrides: tuple[str, ...] = ()
    share: float = 1.0  # of the training minutes
    options: tuple[tuple[str, object], ...] = ()
    default: bool = False  # trained when --only is not given


# Each run costs about a minute of compilation on top of its share (JAX compiles the training
# step, validation, and the test passes: sampled, deterministic, Monte-Carlo), so one 10-minute
# device call trains two or three of them: the defaults are the main line's open targets.
RUNS = [
    Run("dram-pairs", "mnist-pairs", "dram", "visatt-small", ("emissions=3", "scales=4"), share=1.5, default=True),
    Run("ram-c60", "mnist-cluttered-60", "ram", "visatt-60", default=True),
    Run("cnn-seq", "mnist-sequences", "cnn", "modern-seq"),
    Run("stn-seq", "mnist-sequences", "stn", "st-cnn-single"),
    Run("dram-seq", "mnist-sequences", "dram", "visatt-small", ("scales=3",), share=1.5),
    Run("dram-c60", "mnist-cluttered-60", "dram", "visatt-small", ("emissions=1",)),
    Run("ram-c100", "mnist-cluttered-100", "ram", "visatt-100"),
    Run("stn-c60", "mnist-cluttered-60", "stn", None),
    Run("cnn-seed100", "mnist-cluttered", "cnn", "modern"),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = jax.devices()
        return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({keras.backend.backend()})"


def build_stores(datasets, stores: Path, mnist: Path | None, smoke: bool) -> dict[str, Path]:
    from pipelines.build import build_dataset

    paths = {}
    for name in sorted(set(datasets)):
        start = time.perf_counter()
        out = stores / f"{name}.zarr"
        if smoke:
            build_dataset(name, out, source="sample", limit=64, workers=2, progress=False, overwrite=True)
        else:
            build_dataset(name, out, source_dir=mnist, workers=os.cpu_count(), progress=False, overwrite=True)
        log(f"store {name}: {time.perf_counter() - start:.1f} s")
        paths[name] = out
    return paths


def throughput(entry, steps: int, repeats: int, batch_scale: float) -> dict:
    import keras
    import numpy as np

    from visatt_models import registry
    from visatt_models.tasks import BLANK, DigitTask, SequenceTask

    label, name, preset, task_kind, size, batch_size = entry
    batch_size = max(2, int(batch_size * batch_scale))
    task = DigitTask() if task_kind == "digit" else SequenceTask()
    spec = registry.get_model_spec(name)
    keras.utils.set_random_seed(0)
    model = spec.model_cls(registry.make_config(spec, preset=preset), task)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    rng = np.random.default_rng(0)
    n = batch_size * steps
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    if task_kind == "digit":
        labels = rng.integers(0, 10, n).astype(np.int32)
    else:
        labels = np.full((n, 5), BLANK, np.uint8)
        for i, length in enumerate(rng.integers(1, 6, n)):
            labels[i, :length] = rng.integers(0, 10, length)
    fit = dict(batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(images, labels, **fit)  # traces and compiles
    compile_s = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(images, labels, **fit)
        rates.append(n / (time.perf_counter() - start))
    result = {"label": label, "model": name, "preset": preset, "image": size, "batch_size": batch_size,
              "images_per_s": statistics.median(rates), "runs": rates, "first_fit_s": compile_s,
              "params": model.count_params()}
    log(f"{label:<28} {result['images_per_s']:>10.0f} images/s  (first fit {compile_s:.1f} s)")
    return result


def train_run(run: Run, store: Path, runs: Path, seconds: float, smoke: bool) -> dict:
    from visatt_models.train import make_run_spec, train

    options = dict(run.options)
    options.setdefault("epochs", 1 if smoke else 200)
    if smoke:
        options.update(limit=48, batch_size=16, mc_samples=2)
    spec = make_run_spec(str(store), run.model, preset=run.preset, overrides=list(run.overrides), **options)
    folder = runs / run.name
    start = time.perf_counter()
    metrics = train(spec, folder, mode="overwrite", plots=False, verbose=0, time_limit_s=seconds)
    keep = {k: v for k, v in metrics.items() if k.startswith("test_") or k in (
        "epochs_completed", "best_epoch", "best_val", "train_images_per_s", "wall_time_s")}
    log(f"run {run.name}: {time.perf_counter() - start:.0f} s, {json.dumps(keep)}")
    return {"name": run.name, "dataset": run.dataset, "model": run.model, "preset": run.preset,
            "overrides": list(run.overrides), **keep}


def pack(runs: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    tar.add(f, arcname=f"{folder.name}/{f.name}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="summary.json and results.tar.gz go here")
    parser.add_argument("--mnist", type=Path, help="folder of the four MNIST .gz files (not needed with --smoke)")
    parser.add_argument("--stores", type=Path, default=Path("/tmp/visatt-gpu/stores"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/visatt-gpu/runs"))
    parser.add_argument("--train-min", type=float, default=4.0, help="minutes of training, shared by the runs")
    parser.add_argument("--only", nargs="*", help="run names to train (default: those marked default in RUNS); "
                        "none: skip training")
    parser.add_argument("--throughput", nargs="*", help="throughput entries whose label contains one of these "
                        "(default: all); none: skip the throughput step")
    parser.add_argument("--steps", type=int, default=50, help="throughput: steps per timed fit")
    parser.add_argument("--smoke", action="store_true", help="tiny everything, on any machine (a test)")
    args = parser.parse_args(argv)
    if not args.smoke and args.mnist is None:
        parser.error("--mnist is required (or --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = set(args.only or ()) - {r.name for r in RUNS}
    if unknown:
        parser.error(f"unknown run(s) {', '.join(sorted(unknown))}; known: {', '.join(r.name for r in RUNS)}")
    runs = [r for r in RUNS if (r.default if args.only is None else r.name in args.only)]
    summary = {"device": device_name(), "python": platform.python_version(), "smoke": args.smoke}
    import keras

    summary.update(backend=keras.backend.backend(), keras=keras.__version__)
    log(f"device: {summary['device']}, keras {keras.__version__}")

    stores = build_stores([r.dataset for r in runs], args.stores, args.mnist, args.smoke)
    entries = [e for e in THROUGHPUT if args.throughput is None or any(t in e[0] for t in args.throughput)]
    if entries:
        steps, repeats, scale = (1, 1, 1 / 64) if args.smoke else (args.steps, 2, 1.0)
        summary["throughput"] = [throughput(entry, steps, repeats, scale) for entry in entries]
        _write(args.out / "summary.json", summary)
    if runs:
        shutil.rmtree(args.runs, ignore_errors=True)
        args.runs.mkdir(parents=True)
        total = sum(r.share for r in runs)
        summary["runs"] = []
        for r in runs:
            seconds = 60 * args.train_min * r.share / total
            summary["runs"].append(train_run(r, stores[r.dataset], args.runs, seconds, args.smoke))
            _write(args.out / "summary.json", summary)
        pack(args.runs, args.out / "results.tar.gz")
    _write(args.out / "summary.json", summary)
    log(f"wrote {args.out / 'summary.json'}")


def _write(path: Path, values) -> None:
    path.write_text(json.dumps(values, indent=2) + "\n")


if __name__ == "__main__":
    main()
