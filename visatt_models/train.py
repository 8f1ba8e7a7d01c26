"""Training a model on a store: the run spec from options, the fit loop, the final test.

    spec = make_run_spec(store="data.zarr", model="cnn", preset="modern", epochs=20)
    metrics = train(spec, "runs/cnn-modern")            # -> runs/cnn-modern/metrics.json

A run trains on `train`, evaluates `val` after every epoch, keeps the checkpoint with the best
val figure of its task (`accuracy` on single-digit stores, `sequence_accuracy` on sequence
stores; for RAM and DRAM, of a pass at the policy means) and evaluates that checkpoint once on
`test`. The run folder (`runs.py`) holds the spec, the state, the checkpoints and the log.

What resume guarantees. Resuming restores the weights, the optimizer state (moments, iteration
count), the epoch counter, the best val figure and its checkpoint, the log, and the state of
every random generator in the model (saved in the checkpoint by `base.VisattModel`). The batches
of step s are a pure function of (seed, s) (`data.Batches(endless=True)`), so a resumed run
sees the same batches and random draws as an uninterrupted one; on TensorFlow CPU their logs
are identical (tested). The training options and the model config cannot change on resume,
except `epochs`, which may grow to extend a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from typing import Literal

import keras
import numpy as np

from visatt_models import config as cfg
from visatt_models import registry
from visatt_models.config import TrainConfig
from pipelines.reader import store_failures
from visatt_models.data import Batches, Split, StoreInfo, check_crop, check_permute, check_reposition, check_shift, open_store
from visatt_models.evaluate import deterministic_policy, evaluate
from visatt_models.runs import (
    METRICS_FILE,
    OLD_VAL_PASS,
    STATE_FILE,
    TENSORBOARD,
    VAL_PASS,
    RunError,
    RunFolder,
    RunSpec,
    TensorBoardWriter,
    load_resumable,
    load_weights_checked,
    new_state,
    write_json,
)
from visatt_models.tasks import task_from_dict, task_from_store, task_to_dict

# ---------------------------------------------------------------- run specs


def make_run_spec(store, model: str = "cnn", *, preset: str | None = None, overrides=(), head: str | None = None,
                  reverse: bool = False, **train_options) -> RunSpec:
    """The spec of a new run. The store decides the task (`head` picks a sequence store's heads,
    `reverse` trains a right-to-left reader); a config with a `seed` field gets the run seed
    unless an override sets it."""
    info = open_store(store)
    try:
        task = task_from_store(info, head=head, reverse=reverse)
    except ValueError as e:
        raise RunError(str(e)) from None
    train = _train_config(TrainConfig(), train_options)
    try:
        check_crop(train.crop, info.image_shape)
        check_shift(train.shift, train.crop or info.image_shape)
        if train.reposition:
            check_reposition(info)
        if train.permute:
            check_permute(info)
    except ValueError as e:
        raise RunError(f"{info.path}: {e}") from None
    spec = registry.get_model_spec(model)
    fields = {"seed": train.seed} if "seed" in {f.name for f in dataclasses.fields(spec.config_cls)} else {}
    config = registry.make_config(spec, preset=preset, overrides=list(overrides), **fields)
    try:
        spec.model_cls.check_task(task, config)
        spec.model_cls.check_input(task, config, train.crop or info.image_shape)
        spec.model_cls.check_precision(train.precision)
    except ValueError as e:
        raise RunError(f"{model} on {info.path}: {e}") from None
    return RunSpec(model, preset, cfg.config_to_dict(config), task_to_dict(task), train, info.location,
                   info.identity, info.image_shape, info.recipe.get("resample", "bilinear"))


def resume_run_spec(out, *, store=None, model=None, preset=None, overrides=(), head=None, reverse=False,
                    **train_options) -> RunSpec:
    """The recorded spec of the run in `out`, with `epochs` (and a moved `store`) updated.

    Options that are given must agree with the recorded run; anything else is an error that
    names the difference (a run is resumed, never silently changed).
    """
    recorded = RunFolder(out).load_spec()
    if model is not None and model != recorded.model:
        raise RunError(f"{out}: the run trains {recorded.model!r}, not {model!r}")
    if preset is not None and preset != recorded.preset:
        raise RunError(f"{out}: the run used preset {recorded.preset!r}, not {preset!r}")
    if (head is not None and head != recorded.task.get("head")) or (reverse and not recorded.task.get("reverse")):
        raise RunError(f"{out}: the run's task is {recorded.task}; --head and --reverse cannot change it")
    config = recorded.model_config()
    if cfg.parse_overrides(type(config), list(overrides), base=config) != config:
        raise RunError(f"{out}: --set {' '.join(overrides)} changes the recorded model config")
    train = _train_config(recorded.train, train_options)
    changed = [k for k in train_options if k != "epochs" and getattr(train, k) != getattr(recorded.train, k)]
    if changed:
        raise RunError(f"{out}: cannot change {', '.join(changed)} of a run on resume (only epochs)")
    path = recorded.store
    if store is not None:
        info = open_store(store)
        check_same_data(recorded.data, info)
        path = info.location
    return dataclasses.replace(recorded, train=train, store=path)


PREFETCH = 8  # training batches gathered ahead in two background threads (benchmarks/bench_trainer.py --prefetch)


def check_same_data(recorded: dict, info: StoreInfo) -> None:
    """Raise RunError unless the store holds the dataset (name and recipe digest) recorded."""
    if (recorded["dataset"], recorded["recipe_digest"]) != (info.dataset, info.recipe_digest):
        raise RunError(
            f"store {info.path} holds {info.dataset} (recipe {info.recipe_digest[:19]}...), but the run was trained "
            f"on {recorded['dataset']} (recipe {recorded['recipe_digest'][:19]}...)"
        )


def _train_config(base: TrainConfig, options: dict) -> TrainConfig:
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise RunError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    try:
        return dataclasses.replace(base, **options)
    except ValueError as e:
        raise RunError(str(e)) from None


# ---------------------------------------------------------------- training


def make_schedule(train: TrainConfig, steps_per_epoch: int):
    """The learning rate of `train.schedule` (TrainConfig) as a Keras schedule of the optimizer's
    step, planned over `train.epochs` epochs of `steps_per_epoch` steps; a float when constant."""
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            train.lr, decay_steps=train.step_epochs * steps_per_epoch, decay_rate=train.step_factor, staircase=True)
    warmup = round(train.warmup_epochs * steps_per_epoch)
    decay = max(1, train.epochs * steps_per_epoch - warmup)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(train.lr, decay, alpha=train.final_lr_fraction)
    return keras.optimizers.schedules.CosineDecay(0.0, decay, alpha=train.final_lr_fraction, warmup_target=train.lr,
                                                  warmup_steps=warmup)


def make_optimizer(train: TrainConfig, steps_per_epoch: int):
    lr = make_schedule(train, steps_per_epoch)
    common = {"clipnorm": train.clipnorm, "global_clipnorm": train.global_clipnorm, "weight_decay": train.weight_decay or None}
    if train.optimizer == "adam":
        return keras.optimizers.Adam(lr, **common)
    return keras.optimizers.SGD(lr, momentum=train.momentum, **common)


_initialized: list = []


def data_parallel(devices: int | None, batch_size: int) -> int:
    """Split each batch over `devices` accelerators (None: all that are present) with Keras'
    `DataParallel` distribution (JAX): variables replicated, batches sharded along samples, the
    gradients all-reduced; the same global batch gives the same loss as one device. Returns the
    number of devices used. On several hosts (KERAS_DISTRIBUTION_JOB_ADDRESSES,
    KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID set on each), it first
    calls `keras.distribution.initialize()`, and the devices of all hosts form the mesh.
    Multi-host is the Keras API's behaviour, not tested here."""
    if keras.backend.backend() != "jax":
        if devices not in (None, 1):
            raise RunError(f"--devices {devices} needs the JAX backend (KERAS_BACKEND=jax)")
        return 1
    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1 and not _initialized:
        keras.distribution.initialize()  # several hosts: reads KERAS_DISTRIBUTION_* (README, "On a GPU")
        _initialized.append(True)
    present = keras.distribution.list_devices()
    n = len(present) if devices is None else devices
    if n > len(present):
        raise RunError(f"--devices {n}: only {len(present)} device(s) present ({', '.join(present)})")
    if batch_size % n:
        raise RunError(f"--batch-size {batch_size} does not split over {n} devices")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=present[:n]) if n > 1 else None)
    return n


def train(spec: RunSpec, out, *, mode: Literal["new", "resume", "overwrite"] = "new", plots: bool = True, verbose: int = 2,
          time_limit_s: float | None = None, devices: int | None = None, verify: bool = True) -> dict:
    """Train (or continue) the run `spec` in folder `out`, evaluate on test, return metrics.json.

    `time_limit_s`: end this session after the last epoch expected to finish within this many
    seconds of training (judged by the epochs so far); the best checkpoint is then tested as
    usual (metrics.json says `epochs_completed`) and `--resume` continues the run. Not part of
    the run: a run stopped early and resumed equals an uninterrupted one.
    `devices`: data-parallel training over this many devices (`data_parallel`).
    `verify`: check the store against the lock and each split against its recorded digests
    before training (one extra pass over a streamed split); False skips both."""
    folder = RunFolder(out)
    started = time.time()
    t = spec.train
    info = open_store(spec.store, verify=verify)
    check_same_data(spec.data, info)
    splits = {name: Split(info, name, limit=t.limit, memory_limit=t.memory_limit, verify=verify)
              for name in ("train", "val", "test")}
    if len(splits["train"]) == 0 or len(splits["val"]) == 0:
        raise RunError(f"{info.path}: the train and val splits must not be empty ({len(splits['train'])}, {len(splits['val'])} samples)")
    steps_per_epoch = max(1, len(splits["train"]) // t.batch_size)  # as Batches(drop_remainder=True) below
    used = data_parallel(devices, t.batch_size)
    state = folder.prepare(spec, mode)  # after the checks: a run that cannot start leaves no folder

    keras.utils.set_random_seed(t.seed)  # weight initialisers without their own seed
    if state is None:
        state = new_state()
        model = spec.build_model()
        model.compile(optimizer=make_optimizer(t, steps_per_epoch), loss=None)
    else:
        registry.get_model_spec(spec.model)  # imports the model's module: load_model needs its classes registered
        model, state = load_resumable(folder, state)
        if t.schedule != "constant":  # the same schedule, or re-planned over raised epochs
            model.optimizer.learning_rate = make_schedule(t, steps_per_epoch)
    done = state["epochs_completed"]
    folder.start_session(state, keras.backend.backend(), used)

    if done < t.epochs:
        train_batches = Batches(splits["train"], t.batch_size, shuffle=True, seed=t.seed, epoch=done,
                                drop_remainder=True, crop=t.crop, random_crop=True, shift=t.shift, keep_ink=t.shift_keep_ink,
                                ink_floor=t.shift_floor, reposition=t.reposition, permute=t.permute,
                                rotate=t.rotate, shear=t.shear, endless=True, prefetch=PREFETCH)
        val_batches = Batches(splits["val"], t.batch_size, shuffle=False, crop=t.crop)
        deterministic_val = model.stochastic and state.get("val_pass", OLD_VAL_PASS) == VAL_PASS
        recorder = RunRecorder(folder, train_batches, state, started, model.task.selection_metric, time_limit_s,
                               deterministic_val)
        with store_failures(splits["train"], splits["val"]):
            model.fit(train_batches, validation_data=val_batches, epochs=t.epochs, initial_epoch=done,
                      steps_per_epoch=len(train_batches), shuffle=False, callbacks=[recorder], verbose=verbose)
        recorder.close()
    elif (folder.path / METRICS_FILE).exists():
        return json.loads((folder.path / METRICS_FILE).read_text())  # complete: nothing to do

    best = spec.build_model()
    load_weights_checked(best, folder.path / state["best_checkpoint"])
    with store_failures(splits["test"]):
        result = evaluate(best, splits["test"], batch_size=t.batch_size, mc_samples=t.mc_samples, crop=t.crop)
    state["wall_time_s"] += time.time() - started
    metrics = _metrics(spec, info, splits, state, result, best.task.selection_metric)
    if best.stochastic:
        metrics["best_val_pass"] = state.get("val_pass", OLD_VAL_PASS)
    write_json(folder.path / STATE_FILE, state)
    write_json(folder.path / METRICS_FILE, metrics)
    if plots:
        from visatt_models import plots as plotting

        plotting.plot_run(folder.path, best, splits["test"], batch_size=t.batch_size, crop=t.crop)
    return metrics


class RunRecorder(keras.callbacks.Callback):
    """Per epoch: times training, then commits the epoch to the run folder.

    It has no per-batch hook on purpose: a callback with `on_train_batch_end` makes Keras turn
    off its asynchronous callback dispatch and pull the metrics to the host after every step.
    The training time of an epoch runs from `on_epoch_begin` to `on_test_begin` (validation
    starts right after the last step), after a read of the optimizer's step counter that waits
    for the asynchronous (JAX) work to finish. With `deterministic_val` a stochastic model is
    validated at its policy means (its `sampling` scale 0), so the best checkpoint is chosen on
    the deterministic pass rather than on one noisy sample of locations.
    """

    def __init__(self, folder: RunFolder, train_batches: Batches, state: dict, started: float, selection: str,
                 time_limit_s: float | None = None, deterministic_val: bool = False):
        super().__init__()
        self.deterministic_val, self.validation = deterministic_val, contextlib.ExitStack()
        self.folder, self.batches, self.state, self.started, self.selection = folder, train_batches, state, started, selection
        self.writer = TensorBoardWriter(folder.path / TENSORBOARD, keras.backend.backend())
        self.train_end = None
        self.time_limit_s, self.session_start, self.longest_epoch = time_limit_s, None, 0.0

    def on_train_begin(self, logs=None):
        self.session_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.train_end = None

    def on_test_begin(self, logs=None):
        if self.train_end is None:  # validation after this epoch's training
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)  # waits for the last step
            self.train_end = time.perf_counter()
        if self.deterministic_val:
            # Read when validation's first step collects the model's state (JAX) or at run time
            # (TensorFlow); the noise is still drawn, so training's random stream is unchanged.
            self.validation.enter_context(deterministic_policy(self.model))

    def on_test_end(self, logs=None):
        self.validation.close()  # the sampling scale as it was

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self.train_end or now) - self.epoch_start
        row = {"epoch": epoch + 1, **{k: float(np.asarray(v)) for k, v in (logs or {}).items()}}
        row["train_images_per_s"] = self.batches.samples_per_epoch / train_seconds
        row["epoch_seconds"] = now - self.epoch_start
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        wall = self.state["wall_time_s"] + time.time() - self.started
        self.folder.commit_epoch(self.model, self.state, row, self.selection, wall)
        self.writer.scalars(row["epoch"], row)
        self.longest_epoch = max(self.longest_epoch, time.perf_counter() - self.epoch_start)
        if self.time_limit_s is not None and \
                time.perf_counter() - self.session_start + self.longest_epoch > self.time_limit_s:
            self.model.stop_training = True  # the next epoch would overrun: --resume continues

    def close(self):
        self.writer.close()


def _metrics(spec: RunSpec, info: StoreInfo, splits: dict, state: dict, result: dict, selection: str) -> dict:
    speeds = state["train_images_per_s"]
    compiling = {session["first_epoch"] for session in state["sessions"]}
    steady = [v for epoch, v in enumerate(speeds, 1) if epoch not in compiling] or speeds
    return {
        **result,
        "train_images_per_s": statistics.median(steady) if steady else None,
        "train_images_per_s_per_epoch": speeds,
        "best_epoch": state["best_epoch"],
        "best_val_metric": selection,
        "best_val": state["best_val"],
        "epochs": spec.train.epochs,
        "epochs_completed": state["epochs_completed"],
        "checkpoint": state["best_checkpoint"],
        "model": spec.model,
        "preset": spec.preset,
        "config": spec.config,
        "task": spec.task,
        "train": dataclasses.asdict(spec.train),
        "seed": spec.train.seed,
        "dataset": info.dataset,
        "dataset_version": info.version,
        "recipe_digest": info.recipe_digest,
        "store": str(info.path),
        "store_digests": {k: v for k, v in info.digests.items() if k.startswith("test/")},
        "split_sizes": {name: len(split) for name, split in splits.items()},
        "wall_time_s": state["wall_time_s"],
        "sessions": state["sessions"],
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": keras.backend.backend(),
        "machine": machine_info(),
    }


def machine_info() -> dict:
    """Where the numbers were measured: host, CPU, accelerators and library versions."""
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            info["jax"] = jax.__version__
            info["devices"] = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
        elif backend == "tensorflow":
            import tensorflow as tf

            info["tensorflow"] = tf.__version__
            info["devices"] = [f"{d.device_type}:{d.name}" for d in tf.config.list_logical_devices()]
    except Exception as e:  # device listing is informative only
        info["devices"] = [f"unknown ({type(e).__name__})"]
    return info


# ---------------------------------------------------------------- re-evaluation


def evaluate_run(out, *, store=None, mc_samples: int | None = None, limit: int | None = None, force: bool = False,
                 batch_size: int | None = None, backward=None, verify: bool = True) -> dict:
    """Re-evaluate the best checkpoint of the run in `out` on a store's test split.

    The store defaults to the one trained on; another store must hold the same dataset (name
    and recipe digest) unless `force`, and always the same task. `backward`: the folder of a
    right-to-left run (`--reverse`) of the same dataset; the result then also holds the
    forward-backward reading of both (`forward_backward`). The result is written to
    `out/eval-<UTC time>.json`.
    """
    folder = RunFolder(out)
    spec = folder.load_spec()
    state = folder.load_state()
    if state is None or state["epochs_completed"] == 0:
        raise RunError(f"{out}: the run has no completed epoch to evaluate")
    info = open_store(store if store is not None else spec.store, verify=verify)
    same = (spec.data["dataset"], spec.data["recipe_digest"]) == (info.dataset, info.recipe_digest)
    if not same and not force:
        check_same_data(spec.data, info)  # raises, naming both datasets
    task = task_from_dict(spec.task)
    try:
        store_task = task_from_store(info, head=getattr(task, "head", None), reverse=getattr(task, "reverse", False))
    except ValueError:
        store_task = None
    if store_task != task:
        raise RunError(f"store {info.path} has task {info.task!r}; the run was trained for {spec.task} (not even --force mixes tasks)")
    if info.image_shape != spec.image_shape:
        raise RunError(f"store {info.path} holds {'x'.join(map(str, info.image_shape))} images; the run was trained on "
                       f"{'x'.join(map(str, spec.image_shape))} (not even --force resizes them)")
    t = spec.train
    limit = t.limit if limit is None else limit
    keras.utils.set_random_seed(t.seed)
    model = spec.build_model()
    checkpoint = state["best_checkpoint"]
    load_weights_checked(model, folder.path / checkpoint)
    split = Split(info, "test", limit=limit, memory_limit=t.memory_limit, verify=verify)
    mc = t.mc_samples if mc_samples is None else mc_samples
    with store_failures(split):
        result = evaluate(model, split, batch_size=batch_size or t.batch_size, mc_samples=mc, crop=t.crop)
    if backward is not None:
        result["forward_backward"] = _forward_backward(model, spec, backward, split, batch_size or t.batch_size, mc)
    result.update(
        run=str(out), checkpoint=checkpoint, model=spec.model, task=spec.task, dataset=info.dataset,
        dataset_version=info.version, recipe_digest=info.recipe_digest, store=str(info.path),
        same_dataset_as_training=same, forced=force and not same, limit=limit, backend=keras.backend.backend(),
        machine=machine_info(), evaluated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    write_json(folder.path / f"eval-{stamp}.json", result)
    return result


def _forward_backward(forward, spec: RunSpec, backward_dir, split: Split, batch_size: int, mc_samples: int) -> dict:
    """Figures of the forward-backward reading of `forward` and the best checkpoint of `backward_dir`."""
    from visatt_models.evaluate import evaluate_forward_backward

    folder = RunFolder(backward_dir)
    other = folder.load_spec()
    state = folder.load_state()
    if state is None or state["epochs_completed"] == 0:
        raise RunError(f"{backward_dir}: the run has no completed epoch to evaluate")
    if other.data["recipe_digest"] != spec.data["recipe_digest"] or other.train.crop != spec.train.crop:
        raise RunError(f"{backward_dir}: trained on other data ({other.data['dataset']}, crop {other.train.crop}) than the forward run")
    if not other.task.get("reverse") or spec.task.get("reverse"):
        raise RunError(f"{backward_dir}: --backward takes a right-to-left run (visatt-train --reverse) of a left-to-right one")
    backward = other.build_model()
    load_weights_checked(backward, folder.path / state["best_checkpoint"])
    try:
        result = evaluate_forward_backward(forward, backward, split, batch_size=batch_size, mc_samples=mc_samples, crop=spec.train.crop)
    except ValueError as e:
        raise RunError(str(e)) from None
    return {"backward_run": str(backward_dir), "backward_checkpoint": state["best_checkpoint"], **result}
