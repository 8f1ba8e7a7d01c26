"""One GPU session in one call: build the stores, measure training throughput, train every model.

    bash benchmarks/gpu/device.sh                         # on the GPU machine (see its header)
    .venv/bin/python benchmarks/gpu/run.py --smoke --out /tmp/gpu-smoke     # the same, tiny, on a CPU

Steps (each printed as it goes, everything also written under --out):

1. Stores: builds the datasets the runs need from the MNIST files in `--mnist` (all cores,
   spawned processes; frozen versions checked against datasets.lock), into `--stores`.
   `--smoke`: from the embedded MNIST sample, a few dozen images per split.
2. Throughput (`THROUGHPUT`, in a child process, alone on the device, within
   `--throughput-s`): training images/s of each model via `model.fit` on random uint8 images of
   its input size, after one fit that traces and compiles (its seconds are reported too): the
   same loop `visatt-train` runs (no per-batch callback), on the current Keras backend and device.
3. Accuracy (`RUNS`): every selected run at once, one child process each, sharing the device
   (small models leave most of a GPU idle, so runs side by side cost little of each other's
   speed; their images/s are therefore not solo figures). Each trains with
   `visatt_models.train.train` into `--runs/NAME` until the session deadline less `--reserve-s`
   (`time_limit_s`: the session ends after the last epoch that fits; the best-val checkpoint is
   tested and pictured; `visatt-train --out DIR --resume` continues it anywhere). A run still
   going at `--deadline-min` is stopped; its log.csv is what it reports.

Outputs in `--out`: `summary.json` (device, throughput, each run's test figures, epochs, wall
time), `results.md` (the runs as a table in the format of docs/results.md: `markdown`), `results.tar.gz` (each run folder without checkpoints: run.json, state.json,
metrics.json, log.csv, pictures, and the run's console log), so that a device call brings back
a few files. The GPU tables of docs/results.md are made from `summary.json` (`--table SUMMARY` prints one).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's packages, installed or not

# `modern-seq-deep` at twice the width (and a dense layer of 512): on mnist-sequences the deep CNN
# gained nothing from 25 to 40 CPU epochs (2.05% -> 2.03%), its errors mostly misread digits of
# five-digit strips.
WIDE = ("widths=32,64,128,256,512", "dense=512")
# (label, model, preset, task, image side, batch size[, config overrides]), most wanted first:
# the throughput step stops starting entries when its time is up.
THROUGHPUT = [
    ("RAM paper-100, batch 128", "ram", "paper-100", "digit", 100, 128),
    ("RAM paper-100, batch 1024", "ram", "paper-100", "digit", 100, 1024),
    ("CNN modern", "cnn", "modern", "digit", 100, 128),
    ("STN (defaults)", "stn", None, "digit", 60, 128),
    ("DRAM visatt-small", "dram", "visatt-small", "sequence", 64, 128),
    ("CNN modern-seq", "cnn", "modern-seq", "sequence", 64, 128),
    ("ST-CNN single", "stn", "st-cnn-single", "sequence", 64, 128),
    ("CNN modern-seq-deep", "cnn", "modern-seq-deep", "sequence", 64, 128),
    ("CNN modern-seq-deep, 2x wide", "cnn", "modern-seq-deep", "sequence", 64, 128, WIDE),
    ("CNN modern-seq-ctc", "cnn", "modern-seq-ctc", "ctc", 64, 128),
    ("ST-CNN ctc", "stn", "st-cnn-ctc", "ctc", 64, 128),
    ("RAM visatt-60", "ram", "visatt-60", "digit", 60, 128),
    ("RAM conv glimpses: visatt-60, 32/32/64, 12 glimpses", "ram", "visatt-60", "digit", 60, 128,
     ("glimpse_network=conv", "conv_filters=32,32,64", "glimpses=12")),
    ("CNN seed", "cnn", "seed", "digit", 100, 128),
    ("DRAM paper", "dram", "paper", "sequence", 64, 128),
    # DRAM visatt-small in `ops.scan`: a shorter first step on a CPU (JAX) but 10x slower steps
    # there (benchmarks/bench_dram_loop.py); whether a GPU keeps the first without the second is
    # open. Last, so that it takes no time from the others; `--throughput "DRAM visatt-small"`
    # picks both DRAM visatt-small entries.
    ("DRAM visatt-small, scan", "dram", "visatt-small", "sequence", 64, 128, ("emission_loop=scan",)),
]


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    dataset: str
    model: str
    preset: str | None
    overrides: tuple[str, ...] = ()
    options: tuple[tuple[str, object], ...] = ()
    default: bool = False  # trained when --only is not given


def cosine(epochs: int, **options) -> tuple[tuple[str, object], ...]:
    """Run options of a cosine schedule with half an epoch of warm-up over `epochs`, plus `options`."""
    return (("schedule", "cosine"), ("warmup_epochs", 0.5), ("epochs", epochs), *options.items())


# A warm-up of 842 steps = 2 epochs of mnist-pairs (54,000 / 128): REINFORCE starts after them.
WARMUP = "policy_warmup_steps=842"
RUNS = [
    Run("dram-pairs", "mnist-pairs", "dram", "visatt-small", ("emissions=3", "scales=4"), default=True),
    Run("dram-pairs-warmup", "mnist-pairs", "dram", "visatt-small", ("emissions=3", "scales=4", WARMUP), default=True),
    Run("dram-pairs-tanh-warmup", "mnist-pairs", "dram", "visatt-small",
        ("emissions=3", "scales=4", "location_mean=tanh", WARMUP), default=True),
    Run("dram-seq-warmup", "mnist-sequences", "dram", "visatt-small", ("scales=3", WARMUP), default=True),
    # The ablation: REINFORCE never starts (the emission network keeps its initial weights).
    Run("dram-pairs-no-policy", "mnist-pairs", "dram", "visatt-small",
        ("emissions=3", "scales=4", "policy_warmup_steps=1000000000")),
    # More seeds of both, for the next session (one run of each is no comparison: see docs/results.md).
    *(Run(f"dram-pairs-warmup-seed{seed}", "mnist-pairs", "dram", "visatt-small",
          ("emissions=3", "scales=4", WARMUP), (("seed", seed),)) for seed in (1, 2)),
    *(Run(f"dram-pairs-no-policy-seed{seed}", "mnist-pairs", "dram", "visatt-small",
          ("emissions=3", "scales=4", "policy_warmup_steps=1000000000"), (("seed", seed),)) for seed in (1, 2)),
    Run("cnn-seq", "mnist-sequences", "cnn", "modern-seq", default=True),
    Run("stn-seq", "mnist-sequences", "stn", "st-cnn-single", default=True),
    Run("ram-c60", "mnist-cluttered-60", "ram", "visatt-60", default=True),
    Run("stn-c60", "mnist-cluttered-60", "stn", None, default=True),
    Run("dram-c60", "mnist-cluttered-60", "dram", "visatt-small", ("emissions=1",)),
    Run("ram-c100", "mnist-cluttered-100", "ram", "visatt-100"),
    Run("cnn-seed100", "mnist-cluttered", "cnn", "modern"),
    # For the targets: a cosine schedule planned over a fixed number of epochs that fits one call,
    # so the rate has come down when the run ends instead of being cut at 1e-3. Planned for 7 runs
    # side by side without the throughput step (~430 s of training each, against call 1's 8 runs
    # of 345 s in the first H200 session; runs sharing the device split it about evenly): about
    # 1.15x the epochs the constant-lr runs reached in call 1 (docs/results.md). cnn-c100: a guess (26,113
    # images/s alone), not trained on a GPU yet.
    *(Run(f"{name}-cosine", dataset, model, preset, (), cosine(epochs))
      for name, dataset, model, preset, epochs in (
          ("cnn-seq", "mnist-sequences", "cnn", "modern-seq", 60),
          ("stn-seq", "mnist-sequences", "stn", "st-cnn-single", 28),
          ("ram-c60", "mnist-cluttered-60", "ram", "visatt-60", 135),
          ("stn-c60", "mnist-cluttered-60", "stn", None, 90),
          ("cnn-c100", "mnist-cluttered", "cnn", "modern-small", 20))),
    # Decoupled weight decay won the 10-epoch CPU comparison on mnist-cluttered-60 (docs/results.md).
    Run("ram-c60-cosine-wd", "mnist-cluttered-60", "ram", "visatt-60", (), cosine(135, weight_decay=0.05)),
    # The cosine runs above overfit (train accuracy near 1.0 well before the end): the same with
    # weight decay, three side by side in a shorter call.
    *(Run(f"{name}-cosine-wd", dataset, model, preset, (), cosine(epochs, weight_decay=0.05))
      for name, dataset, model, preset, epochs in (
          ("cnn-seq", "mnist-sequences", "cnn", "modern-seq", 80),
          ("stn-seq", "mnist-sequences", "stn", "st-cnn-single", 40),
          ("stn-c60", "mnist-cluttered-60", "stn", None, 120))),
    # Weight decay did not stop the overfitting (second H200 session, docs/results.md): the same with
    # `--shift` (each training image translated by up to K pixels per epoch; 2 on mnist-sequences,
    # whose long strips fill the width), epochs planned for 7 runs side by side as in call 1.
    *(Run(f"{name}-cosine-wd-shift", dataset, model, preset, (), cosine(epochs, weight_decay=0.05, shift=shift))
      for name, dataset, model, preset, epochs, shift in (
          ("cnn-seq", "mnist-sequences", "cnn", "modern-seq", 60, 2),
          ("stn-seq", "mnist-sequences", "stn", "st-cnn-single", 28, 2),
          ("stn-c60", "mnist-cluttered-60", "stn", None, 90, 4))),
    # On the whole training set the shift alone did not stop STN's overfitting (a 40-epoch CPU run
    # reached train accuracy 0.996 by epoch 21 at val 0.973); `--preset zoom-60` (a 30x30 output
    # that must find the digit, dropout 0.5) gave 1.59% in 25 CPU epochs and 1.45% in 35 for seed 0
    # (seeds 1 and 2: 1.61% and 1.82%; docs/results.md).
    # The same recipe, planned like stn-c60-cosine-wd-shift.
    Run("stn-c60-zoom-cosine-wd-shift", "mnist-cluttered-60", "stn", "zoom-60", (),
        cosine(90, weight_decay=0.05, shift=4)),
    # RAM's cosine run ends with train accuracy 0.978 against val 0.956 (second H200 session): the
    # shift on it too, for a later call.
    Run("ram-c60-cosine-wd-shift", "mnist-cluttered-60", "ram", "visatt-60", (),
        cosine(135, weight_decay=0.05, shift=4)),
    # 12 glimpses beat 8 in a 70-epoch CPU comparison (docs/results.md; the better val from epoch 31 on):
    # the same with 12, its epochs cut by the 1.5x cost per image.
    Run("ram-c60-g12-cosine-wd-shift", "mnist-cluttered-60", "ram", "visatt-60", ("glimpses=12",),
        cosine(90, weight_decay=0.05, shift=4)),
    # mnist-pairs' CNN and ST-CNN target (issue 7) has no run yet: the shifted, weight-decayed recipe
    # at once (a CPU check on 8,000 images showed the shift closing the train/val gap: docs/results.md).
    # Epochs guessed from the 64x64 runs' side-by-side throughput scaled by the pixels (100x100).
    *(Run(f"{name}-cosine-wd-shift", "mnist-pairs", model, preset, (), cosine(epochs, weight_decay=0.05, shift=4))
      for name, model, preset, epochs in (
          ("cnn-pairs", "cnn", "modern-seq", 40),
          ("stn-pairs", "stn", "st-cnn-single", 20))),
    # The CPU's 10-epoch mnist-pairs runs (docs/results.md): `modern-seq-deep` (a fourth stage, final units
    # seeing 93 pixels instead of 45) was ahead of `modern-seq` at every epoch; the same recipe on
    # both multi-digit stores.
    *(Run(f"{name}-cosine-wd-shift", dataset, "cnn", "modern-seq-deep", (), cosine(epochs, weight_decay=0.05, shift=shift))
      for name, dataset, epochs, shift in (
          ("cnn-deep-pairs", "mnist-pairs", 40, 4),
          ("cnn-deep-seq", "mnist-sequences", 60, 2))),
    # On the CPU, `--shift 8 --keep-ink` in place of `--shift 2` gave 2.22% against 2.36% over 25
    # epochs (one seed each; lengths 2-4 gained, 5 lost: docs/results.md): the same over the GPU's 60.
    Run("cnn-deep-seq-keepink8-cosine-wd", "mnist-sequences", "cnn", "modern-seq-deep", (),
        cosine(60, weight_decay=0.05, shift=8, shift_keep_ink=True)),
    # Five-digit strips fill the width and hardly move under --keep-ink (4.61% against 4.10% with
    # --shift 2; 5.17% after 40 CPU epochs): the same with a floor of 2 px for every image.
    Run("cnn-deep-seq-keepink8-floor2-cosine-wd", "mnist-sequences", "cnn", "modern-seq-deep", (),
        cosine(60, weight_decay=0.05, shift=8, shift_keep_ink=True, shift_floor=2)),
    # Pairs stacked one above the other hold over half of the deep pairs CNN's errors, though the
    # ink shows their order (benchmarks/pairs_order.py): --reposition makes new pairs of the same
    # digits every epoch.
    Run("cnn-deep-pairs-reposition-cosine-wd", "mnist-pairs", "cnn", "modern-seq-deep", (),
        cosine(40, weight_decay=0.05, shift=4, reposition=True)),
    # --reposition took the CPU's deep pairs CNN to 2.00% in 30 epochs (2.47 without): its strips
    # counterpart, --permute, gives the same digits other orders among their cells every epoch.
    Run("cnn-deep-seq-keepink8-permute-cosine-wd", "mnist-sequences", "cnn", "modern-seq-deep", (),
        cosine(60, weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True)),
    # The same recipe at twice the width (3x the deep CNN's cost a step on a CPU), over the 25 epochs
    # of the CPU's deep run (2.05%); and ST-CNN (2.22% without a shift
    # on the second H200 session) with the CNN's --shift 8 --keep-ink --permute.
    Run("cnn-wide-seq-keepink8-permute-cosine-wd", "mnist-sequences", "cnn", "modern-seq-deep", WIDE,
        cosine(25, weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True)),
    Run("stn-seq-keepink8-permute-cosine-wd", "mnist-sequences", "stn", "st-cnn-single", (),
        cosine(30, weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True)),
    # zoom-60 on mnist-cluttered-60 over seeds 0-2 on the CPU (35 epochs): 1.45, 1.61, 1.82%: a second seed.
    Run("stn-c60-zoom-cosine-wd-shift-seed1", "mnist-cluttered-60", "stn", "zoom-60", (),
        cosine(90, weight_decay=0.05, shift=4, seed=1)),
    # The warm-up runs' policies ran into the image border once REINFORCE started (docs/results.md): the
    # same with a leash on the means beyond the clip, two seeds.
    *(Run(f"dram-pairs-warmup-leash-seed{seed}", "mnist-pairs", "dram", "visatt-small",
          ("emissions=3", "scales=4", WARMUP, "location_leash=1.0"), (("seed", seed),)) for seed in (0, 1)),
    # With 4 scales the coarsest patch (96 px) sees nearly the whole 100x100 canvas, so glimpses
    # near the centre read both digits coarsely: a local optimum the policy settles in (the leashed
    # CPU run's glimpses ended there). The paper's 2 scales (24 px, less than a digit) and 3 (48 px)
    # leave only attention: leashed, from the first step (no warm-up: at the centre the classifier
    # could learn little), for a later call.
    *(Run(f"dram-pairs-leash-scales{scales}", "mnist-pairs", "dram", "visatt-small",
          ("emissions=3", f"scales={scales}", "location_leash=1.0")) for scales in (2, 3)),
    # Third H200 session: with 2 scales the leashed DRAM learnt attention (`--preset visatt-leash` with `emissions=3`;
    # 2.69% MC on mnist-pairs after 80 epochs at a constant rate, val at 0.93-0.965 from about epoch 30). A cosine schedule,
    # and the same model on the other two DRAM targets (weight decay and the shift as for the CNNs and
    # RAM). Epochs planned for 5 runs side by side: DRAM trained at 5,500 images/s beside 7 other runs and
    # 13,800 beside 2 (mnist-pairs); sequences emit 6 times (3 glimpses each), pairs 3
    # (`emissions=3`: two digits and the end; the store pads labels to 5), digits once.
    Run("dram-pairs-leash-cosine", "mnist-pairs", "dram", "visatt-leash", ("emissions=3",), cosine(60)),
    Run("dram-seq-leash-cosine-wd", "mnist-sequences", "dram", "visatt-leash", (),
        cosine(30, weight_decay=0.05, shift=8, shift_keep_ink=True)),
    Run("dram-c60-leash-cosine-wd-shift", "mnist-cluttered-60", "dram", "visatt-leash", (),
        cosine(80, weight_decay=0.05, shift=4)),
    # The 2x wide CNN (1.90% in 25 epochs, third session) over 40, and ST-CNN with a classifier of the
    # same widths and stages. `--permute`'s loader held these runs to ~5,500 images/s side by side
    # (since then ~3x faster on a CPU: vectorised, and augmenting in both prefetch threads; docs/results.md).
    Run("cnn-wide-seq-keepink8-permute-cosine-wd-40", "mnist-sequences", "cnn", "modern-seq-deep", WIDE,
        cosine(40, weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True)),
    Run("stn-wide-seq-keepink8-permute-cosine-wd", "mnist-sequences", "stn", "st-cnn-single",
        ("cls_filters=32,64,128,256,512", "cls_dense=512"),
        cosine(30, weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True)),
    # RAM with DRAM's convolutional glimpse network learnt much faster per epoch on the CPU than the
    # dense one (docs/results.md, "RAM with DRAM's glimpse network"; 8 glimpses, convs 16/16/32). On the GPU
    # DRAM's 32/32/64 and 12 glimpses, 100 epochs: the epochs are a guess (DRAM with 3 such glimpses an
    # image trained at 5,500 images/s beside 7 runs); THROUGHPUT measures it alone.
    Run("ram-c60-conv-g12-cosine-wd-shift", "mnist-cluttered-60", "ram", "visatt-60",
        ("glimpse_network=conv", "conv_filters=32,32,64", "glimpses=12", "location_leash=1.0"),
        cosine(100, weight_decay=0.05, shift=4)),
    # The ctc head reads frames of column bands with one set of weights (the flattened head learns
    # each place on the canvas apart): on the CPU 2.00% in 21 epochs against the deep CNN's 2.05 in
    # 25, single digits 0.65% wrong against 0.79 (docs/results.md, "A CTC head"). Twice the width
    # gave the deep CNN 1.90 against 2.05: the ctc CNN at twice the width, and ST-CNN with the head.
    *(Run(f"{name}-seq-keepink8-permute-cosine-wd", "mnist-sequences", model, preset, overrides,
          cosine(40, head="ctc", weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True))
      for name, model, preset, overrides in (
          ("cnn-ctc", "cnn", "modern-seq-ctc", ()),
          ("cnn-ctc-wide", "cnn", "modern-seq-ctc", ("widths=32,64,128,256", "rnn=256")),
          ("stn-ctc", "stn", "st-cnn-ctc", ()))),
    # Two thirds of the ctc CNN's errors are in 4- and 5-digit strips, whose digits (~13 pixels
    # across) are ~6 pixels wide after its first stride-2 stage (docs/results.md, "A CTC head"): the
    # ctc CNN with its first stage at full resolution (`full_res_stages=1`: 0.343 GFLOPs an image
    # against 0.111) against the wide one above (0.440), resolution against width. Not in a call yet.
    Run("cnn-ctc-hires-seq-keepink8-permute-cosine-wd", "mnist-sequences", "cnn", "modern-seq-ctc", ("full_res_stages=1",),
        cosine(40, head="ctc", weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True)),
    # The same with each training image slanted and turned (`--shear 0.15 --rotate 8`). On the CPU it
    # did not help the narrow ctc CNN (2.21 against 2.00 in 21 epochs, train accuracy down as much as
    # val: short of capacity; docs/results.md, "Slanting and turning"); the wider models may use it.
    # Pillow's resampling adds ~160 us an image to the loader thread, on top of --permute's.
    *(Run(f"{name}-seq-keepink8-permute-affine-cosine-wd", "mnist-sequences", model, preset, overrides,
          cosine(40, head="ctc", weight_decay=0.05, shift=8, shift_keep_ink=True, permute=True, rotate=8.0, shear=0.15))
      for name, model, preset, overrides in (
          ("cnn-ctc-wide", "cnn", "modern-seq-ctc", ("widths=32,64,128,256", "rnn=256")),
          ("stn-ctc", "stn", "st-cnn-ctc", ()))),
]
RUN_FILES = ("run.json", "state.json", "metrics.json", "log.csv")  # and every picture (*.png)


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
        else:  # processes: generation holds the GIL, so threads would not use the cores
            build_dataset(name, out, source_dir=mnist, workers=os.cpu_count(), scheduler="processes",
                          progress=False, overwrite=True)
        log(f"store {name}: {time.perf_counter() - start:.1f} s")
        paths[name] = out
    return paths


# ---------------------------------------------------------------- children (one per step/run)

def throughput(entry, steps: int, repeats: int, batch_scale: float, steps_per_execution: int = 1) -> dict:
    """Training images/s of one THROUGHPUT entry; with `steps_per_execution` N > 1 also with N
    steps per compiled call, and the difference per step: an estimate of the host work per step
    (Python, dispatch, batch transfer) that one call per step costs."""
    result = _fit_rate(entry, steps, repeats, batch_scale, 1)
    if steps_per_execution > 1:
        fused = _fit_rate(entry, steps, repeats, batch_scale, steps_per_execution)
        per_step = 1e6 * result["batch_size"]  # microseconds per step = per_step / images_per_s
        result.update(steps_per_execution=steps_per_execution, images_per_s_fused=fused["images_per_s"],
                      first_fit_s_fused=fused["first_fit_s"],
                      host_us_per_step=per_step / result["images_per_s"] - per_step / fused["images_per_s"])
        log(f"{entry[0]:<28} {fused['images_per_s']:>10.0f} images/s with {steps_per_execution} steps a call: "
            f"~{result['host_us_per_step']:.0f} us of host work per step")
    return result


def _fit_rate(entry, steps: int, repeats: int, batch_scale: float, steps_per_execution: int) -> dict:
    import keras
    import numpy as np

    from visatt_models import registry
    from visatt_models.tasks import BLANK, DigitTask, SequenceTask

    label, name, preset, task_kind, size, batch_size, *overrides = entry
    batch_size = max(2, int(batch_size * batch_scale))
    task = DigitTask() if task_kind == "digit" else SequenceTask(head="ctc" if task_kind == "ctc" else "independent")
    spec = registry.get_model_spec(name)
    keras.utils.set_random_seed(0)
    model = spec.model_cls(registry.make_config(spec, preset=preset, overrides=overrides[0] if overrides else ()), task)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), steps_per_execution=steps_per_execution)
    steps = max(steps, steps_per_execution) // steps_per_execution * steps_per_execution
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
    if steps_per_execution == 1:
        log(f"{label:<28} {result['images_per_s']:>10.0f} images/s  (first fit {compile_s:.1f} s)")
    return result


def throughput_child(labels, out: Path, seconds: float, steps: int, smoke: bool, steps_per_execution: int = 1) -> None:
    """Measures the entries in order, writing `out` after each; starts none after `seconds`."""
    import keras

    start = time.perf_counter()
    result = {"device": device_name(), "backend": keras.backend.backend(), "keras": keras.__version__,
              "throughput": [], "skipped": []}
    entries = [e for e in THROUGHPUT if labels is None or any(t in e[0] for t in labels)]
    for entry in entries:
        if time.perf_counter() - start > seconds:
            result["skipped"].append(entry[0])
            continue
        steps_, repeats, scale = (1, 1, 1 / 64) if smoke else (steps, 2, 1.0)
        result["throughput"].append(throughput(entry, steps_, repeats, scale, steps_per_execution))
        _write(out, result)
    if result["skipped"]:
        log(f"throughput: out of time, skipped {', '.join(result['skipped'])}")
    _write(out, result)


def run_child(run: Run, store: Path, runs: Path, seconds: float, smoke: bool) -> None:
    """Trains one run into runs/NAME within `seconds` of training; writes runs/NAME.result.json."""
    import keras

    from visatt_models.train import make_run_spec, train

    options = dict(run.options)
    options.setdefault("epochs", 500)
    if smoke:
        options.update(limit=48, batch_size=16, mc_samples=2, epochs=1)
    spec = make_run_spec(str(store), run.model, preset=run.preset, overrides=list(run.overrides), **options)
    start = time.perf_counter()
    metrics = train(spec, runs / run.name, mode="overwrite", plots=True, verbose=2, time_limit_s=seconds)
    keep = {k: v for k, v in metrics.items() if k.startswith("test_") or k in (
        "epochs_completed", "best_epoch", "best_val", "train_images_per_s", "wall_time_s")}
    log(f"run {run.name}: {time.perf_counter() - start:.0f} s, {json.dumps(keep)}")
    _write(runs / f"{run.name}.result.json", {**_describe(run), "device": device_name(),
                                              "backend": keras.backend.backend(), **keep})


# ---------------------------------------------------------------- the session (no Keras here)

def _describe(run: Run) -> dict:
    return {"name": run.name, "dataset": run.dataset, "model": run.model, "preset": run.preset,
            "overrides": list(run.overrides), "options": dict(run.options)}


def _child(args, *extra, log_file: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), *extra]
    if args.smoke:
        cmd.append("--smoke")
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    if args.deterministic:  # XLA's deterministic GPU reductions and scatters (slower); a no-op on a CPU
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()
    return subprocess.Popen(cmd, stdout=log_file.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait(procs: dict, deadline: float) -> dict:
    """Waits for the children until `deadline` (perf_counter); stops those still running. {name: rc}."""
    codes = {}
    while len(codes) < len(procs):
        for name, proc in procs.items():
            if name not in codes and proc.poll() is not None:
                codes[name] = proc.returncode
                log(f"{name}: exit {proc.returncode}")
        if len(codes) < len(procs):
            if time.perf_counter() > deadline:
                late = {name: proc for name, proc in procs.items() if name not in codes}
                log(f"still running at the deadline, stopped: {', '.join(late)}")
                _stop(late.values())
                codes.update(dict.fromkeys(late, "stopped"))
            else:
                time.sleep(1)
    return codes


def _stop(procs) -> None:
    """SIGTERM to every process group at once, SIGKILL to those alive 5 s later."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass
        end = time.perf_counter() + 5
        while time.perf_counter() < end and any(proc.poll() is None for proc in procs):
            time.sleep(0.2)
    for proc in procs:
        proc.wait()


def _last_epoch(folder: Path) -> dict:
    """The last row of a run's log.csv (a stopped run's figures), as numbers."""
    try:
        with (folder / "log.csv").open() as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    if not rows:
        return {}
    return {"last_epoch": {k: float(v) if v not in ("", None) else None for k, v in rows[-1].items()}}


def pack(runs: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(runs.glob("*.log")):
            tar.add(f, arcname=f.name)
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            for f in sorted(folder.iterdir()):
                if f.is_file() and (f.name in RUN_FILES or f.suffix == ".png"):
                    tar.add(f, arcname=f"{folder.name}/{f.name}")


def session(args, runs: list[Run]) -> None:
    start = time.perf_counter()
    deadline = start + 60 * args.deadline_min if args.deadline_min else float("inf")
    summary = {"python": platform.python_version(), "smoke": args.smoke, "deadline_min": args.deadline_min,
               "deterministic": args.deterministic}
    args.runs.mkdir(parents=True, exist_ok=True)
    stores = build_stores([r.dataset for r in runs], args.stores, args.mnist, args.smoke)
    summary["stores_s"] = round(time.perf_counter() - start, 1)

    if args.throughput is None or args.throughput:
        out = args.out / "throughput.json"
        child = _child(args, "--child-throughput", *(args.throughput or ()), "--throughput-s", str(args.throughput_s),
                       "--steps", str(args.steps), "--steps-per-execution", str(args.steps_per_execution),
                       log_file=args.runs / "throughput.log")
        rc = _wait({"throughput": child}, min(deadline, time.perf_counter() + args.throughput_s + 120))
        summary["throughput_exit"] = rc["throughput"]
        if out.exists():
            summary.update(json.loads(out.read_text()))
            out.unlink()
        _write(args.out / "summary.json", summary)

    if runs:
        for r in runs:
            shutil.rmtree(args.runs / r.name, ignore_errors=True)
        seconds = (deadline - time.perf_counter() - args.reserve_s) if args.deadline_min else 1e9
        if seconds < (5 if args.smoke else 60):
            log(f"no time left to train ({seconds:.0f} s)")
        else:
            log(f"training {len(runs)} runs side by side, {seconds:.0f} s each")
            procs = {r.name: _child(args, "--child-run", r.name, "--store", str(stores[r.dataset]),
                                    "--runs", str(args.runs), "--seconds", str(seconds),
                                    log_file=args.runs / f"{r.name}.log") for r in runs}
            codes = _wait(procs, deadline)
            summary["runs"] = []
            for r in runs:
                result = args.runs / f"{r.name}.result.json"
                entry = json.loads(result.read_text()) if result.exists() else {**_describe(r), **_last_epoch(args.runs / r.name)}
                summary["runs"].append({**entry, "exit": codes[r.name]})
                summary.setdefault("device", entry.get("device"))
        pack(args.runs, args.out / "results.tar.gz")
    summary["session_s"] = round(time.perf_counter() - start, 1)
    _write(args.out / "summary.json", summary)
    if summary.get("runs"):
        (args.out / "results.md").write_text(markdown(summary))
    for line in _report(summary):
        log(line)
    log(f"wrote {args.out / 'summary.json'}")


def _report(summary: dict):
    """One line per throughput entry and per run, for the console."""
    for t in summary.get("throughput", []):
        fused = (f", {t['images_per_s_fused']:.0f} with {t['steps_per_execution']} steps a call "
                 f"(~{t['host_us_per_step']:.0f} us host work per step)") if "images_per_s_fused" in t else ""
        yield f"{t['label']:<28} {t['images_per_s']:>10.0f} images/s{fused}"
    for r in summary.get("runs", []):
        figures = {k.removeprefix("test_"): round(v, 4) for k, v in r.items()
                   if k.startswith("test_") and ("error" in k or k == "test_accuracy" or k.startswith("test_accuracy_"))}
        if "last_epoch" in r:
            figures = {k: v for k, v in r["last_epoch"].items() if k.startswith("val_") or k == "epoch"}
        yield f"{r['name']:<24} exit {r['exit']} epochs {r.get('epochs_completed', '?')} {json.dumps(figures)}"


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


# Training options whose `visatt-train` flag is not the field's name.
_FLAGS = {"shift_keep_ink": "keep-ink", "mc_samples": "mc"}


def _flag(key: str, value) -> str:
    """A training option as its `visatt-train` flag: `--keep-ink` for a true switch, `--epochs 90`."""
    name = "--" + _FLAGS.get(key, key.replace("_", "-"))
    return name if value is True else f"{name} {value}"


def markdown(summary: dict) -> str:
    """The runs of a summary as a README table: test error in % (single sampled pass / at the
    policy means / Monte-Carlo for RAM and DRAM), the settings as `visatt-train` options (those of
    the run's entry in `RUNS`; a run without `epochs` there trained until the deadline, and a
    `--smoke` session's runs are cut to one tiny epoch besides)."""
    known = {r.name: r for r in RUNS}
    lines = ["| run | dataset | model | settings | epochs (best) | test error % | train images/s | exit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary.get("runs", []):
        run = known.get(r["name"])
        settings = ([f"--preset {r['preset']}"] if r.get("preset") else []) + [f"--set {o}" for o in r.get("overrides", [])]
        given = r["options"].items() if "options" in r else (run.options if run is not None else ())
        settings += [_flag(k, v) for k, v in given if v is not False]
        metric = "test_sequence_error" if "test_sequence_error" in r else "test_error"
        if metric in r:
            errors = " / ".join(_percent(r.get(metric + suffix)) for suffix in
                                (("", "_det", "_mc") if r["model"] in ("ram", "dram") else ("",)))
            epochs = f"{r.get('epochs_completed', '?')} ({r.get('best_epoch', '?')})"
        else:  # stopped before its test: the last epoch's val figures
            last = r.get("last_epoch", {})
            val = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("val_") and v is not None)
            errors = f"not tested ({'val ' + val if val else 'no epoch logged'})"
            epochs = f"{int(last['epoch']) if last.get('epoch') else '?'} (-)"
        speed = f"{r['train_images_per_s']:,.0f}" if r.get("train_images_per_s") else "-"
        lines.append(f"| `{r['name']}` | `{r['dataset']}` | {r['model']} | `{' '.join(settings) or 'defaults'}` | "
                     f"{epochs} | {errors} | {speed} | {r.get('exit')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="summary.json, results.md (the runs as a README table) and "
                        "results.tar.gz go here")
    parser.add_argument("--table", type=Path, metavar="SUMMARY", help="print the runs of a summary.json as a "
                        "README table and exit")
    parser.add_argument("--mnist", type=Path, help="folder of the four MNIST .gz files (not needed with --smoke)")
    parser.add_argument("--stores", type=Path, default=Path("/tmp/visatt-gpu/stores"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/visatt-gpu/runs"))
    parser.add_argument("--deadline-min", type=float, default=9.3,
                        help="the whole session's minutes (0: none); runs still going then are stopped")
    parser.add_argument("--reserve-s", type=float, default=110,
                        help="seconds kept after training for each run's test passes and pictures")
    parser.add_argument("--only", nargs="*", help="run names to train (default: those marked default in RUNS); "
                        "none: skip training")
    parser.add_argument("--throughput", nargs="*", help="throughput entries whose label contains one of these "
                        "(default: all); none: skip the throughput step")
    parser.add_argument("--throughput-s", type=float, default=75, help="no throughput entry starts after this")
    parser.add_argument("--steps", type=int, default=50, help="throughput: steps per timed fit")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="throughput: also measure with N steps per compiled call (another compile per "
                        "entry) and report the difference per step, an estimate of the host work per step")
    parser.add_argument("--deterministic", action="store_true",
                        help="ask XLA for deterministic GPU ops in every child (the same seed, the same run)")
    parser.add_argument("--smoke", action="store_true", help="tiny everything, on any machine (a test)")
    parser.add_argument("--child-throughput", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--child-run", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        return print(markdown(json.loads(args.table.read_text())), end="")
    if args.out is None:
        parser.error("--out is required")
    if args.child_throughput is not None:
        return throughput_child(args.child_throughput or None, args.out / "throughput.json", args.throughput_s,
                                args.steps, args.smoke, args.steps_per_execution)
    if args.child_run:
        run = next(r for r in RUNS if r.name == args.child_run)
        return run_child(run, args.store, args.runs, args.seconds, args.smoke)
    if not args.smoke and args.mnist is None:
        parser.error("--mnist is required (or --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = set(args.only or ()) - {r.name for r in RUNS}
    if unknown:
        parser.error(f"unknown run(s) {', '.join(sorted(unknown))}; known: {', '.join(r.name for r in RUNS)}")
    session(args, [r for r in RUNS if (r.default if args.only is None else r.name in args.only)])


def _write(path: Path, values) -> None:
    path.write_text(json.dumps(values, indent=2) + "\n")


if __name__ == "__main__":
    main()
