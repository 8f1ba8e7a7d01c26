"""Training and evaluation of a model on a store, with a run folder that can be resumed.

    spec = make_run_spec(store="data.zarr", model="cnn", preset="modern", epochs=20)
    metrics = train(spec, "runs/cnn-modern")            # -> runs/cnn-modern/metrics.json

A run trains on `train`, keeps the checkpoint with the best `val` accuracy and evaluates it
once on `test` at the end. The run folder holds:

    run.json          what the run is: model, full config, training options, the store's identity
    state.json        how far it got: completed epochs, best epoch, checkpoint files, timings
    checkpoints/      last-epoch-NNNN.keras (model + optimizer state, for resuming) and
                      best-epoch-NNNN.weights.h5 (the weights evaluated on test)
    log.csv           one row per epoch: losses and metrics on train and val, images/s, seconds
    tensorboard/      the same scalars as TensorBoard event files
    metrics.json      the final result (see `docs/models.md` for every field)
    *.png             learning curves and model pictures (`plots.py`)

Folder rules: a new run needs an empty or absent folder; a folder holding a run is continued
only with `mode="resume"` and replaced only with `mode="overwrite"`; a non-empty folder that
holds no run (no run.json) is never touched.

What resume guarantees. Every completed epoch is committed atomically (checkpoint files first,
then state.json, which names them), so a run killed at any moment resumes from the end of its
last completed epoch; the work of the interrupted epoch is lost. Resuming restores the weights,
the optimizer state (moments, iteration count), the epoch counter, the best validation accuracy
and its checkpoint, the log, and the state of every Keras `SeedGenerator` in the model (dropout
masks, RAM's location noise). The data order of epoch e is a function of (seed, e) only. So a
resumed run sees the same batches and random draws as an uninterrupted one; on the same machine,
backend and library versions its numbers match up to the backend's floating-point
nondeterminism (on TensorFlow CPU they were identical in our tests). The training options
and the model config cannot change on resume, except `epochs`, which may grow to extend a run.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from visatt_models import config as cfg
from visatt_models.config import TrainConfig
from visatt_models.data import Batches, Split, StoreInfo, open_store

RUN_FILE, STATE_FILE, METRICS_FILE, LOG_FILE = "run.json", "state.json", "metrics.json", "log.csv"
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
FORMAT = 1  # version of the run folder layout, recorded in run.json


class RunError(Exception):
    """A run folder, store or option is not usable for what was asked (one-line message)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; stored as run.json."""

    model: str
    preset: str | None
    config: dict  # the model config's fields
    train: TrainConfig
    store: str  # absolute path of the store
    data: dict  # the store's identity: dataset, version, recipe_digest
    image_shape: tuple[int, ...]  # (H, W, C)

    def to_json(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, values: dict) -> "RunSpec":
        values = {k: v for k, v in values.items() if k != "format"}
        values["train"] = cfg.config_from_dict(TrainConfig, values["train"])
        values["image_shape"] = tuple(values["image_shape"])
        return cls(**values)

    def model_config(self):
        spec = cfg.get_model_spec(self.model)
        return cfg.config_from_dict(spec.config_cls, self.config)

    def build_model(self):
        """A fresh model of this spec, built for the store's image shape."""
        model = cfg.get_model_spec(self.model).model_cls(self.model_config())
        model(np.zeros((1, *self.image_shape), np.uint8))  # create the weights
        return model


# ---------------------------------------------------------------- run specs


def make_run_spec(store, model: str = "cnn", *, preset: str | None = None, overrides=(), **train_options) -> RunSpec:
    """The spec of a new run. The store decides `num_classes`; a config with a `seed` field gets
    the run seed unless an override sets it."""
    info = _open_digit_store(store)
    train = _train_config(TrainConfig(), train_options)
    spec = cfg.get_model_spec(model)
    fields = {"num_classes": info.num_classes}
    if "seed" in {f.name for f in dataclasses.fields(spec.config_cls)}:
        fields["seed"] = train.seed
    config = cfg.make_config(spec, preset=preset, overrides=list(overrides), **fields)
    if config.num_classes != info.num_classes:
        raise RunError(f"num_classes={config.num_classes} but store {info.path} has {info.num_classes} classes")
    return RunSpec(model, preset, cfg.config_to_dict(config), train, str(info.path.resolve()), info.identity, info.image_shape)


def resume_run_spec(out, *, store=None, model=None, preset=None, overrides=(), **train_options) -> RunSpec:
    """The recorded spec of the run in `out`, with `epochs` (and a moved `store`) updated.

    Options that are given must agree with the recorded run; anything else is an error that
    names the difference (a run is resumed, never silently changed).
    """
    recorded = load_run_spec(out)
    if model is not None and model != recorded.model:
        raise RunError(f"{out}: the run trains {recorded.model!r}, not {model!r}")
    if preset is not None and preset != recorded.preset:
        raise RunError(f"{out}: the run used preset {recorded.preset!r}, not {preset!r}")
    config = recorded.model_config()
    if cfg.parse_overrides(type(config), list(overrides), base=config) != config:
        raise RunError(f"{out}: --set {' '.join(overrides)} changes the recorded model config")
    train = _train_config(recorded.train, train_options)
    changed = [k for k in train_options if k != "epochs" and getattr(train, k) != getattr(recorded.train, k)]
    if changed:
        raise RunError(f"{out}: cannot change {', '.join(changed)} of a run on resume (only epochs)")
    path = recorded.store
    if store is not None:
        info = _open_digit_store(store)
        check_same_data(recorded.data, info)
        path = str(info.path.resolve())
    return dataclasses.replace(recorded, train=train, store=path)


def load_run_spec(out) -> RunSpec:
    path = Path(out) / RUN_FILE
    if not path.exists():
        raise RunError(f"{out}: no run here (no {RUN_FILE})")
    return RunSpec.from_json(json.loads(path.read_text()))


def check_same_data(recorded: dict, info: StoreInfo) -> None:
    """Raise RunError unless the store holds the dataset (name and recipe digest) recorded."""
    if (recorded["dataset"], recorded["recipe_digest"]) != (info.dataset, info.recipe_digest):
        raise RunError(
            f"store {info.path} holds {info.dataset} (recipe {info.recipe_digest[:19]}...), but the run was trained "
            f"on {recorded['dataset']} (recipe {recorded['recipe_digest'][:19]}...)"
        )


def _open_digit_store(store) -> StoreInfo:
    info = open_store(store)
    if info.task != "digit":
        raise RunError(f"{info.path}: task {info.task!r}: visatt-train supports single-digit stores only")
    return info


def _train_config(base: TrainConfig, options: dict) -> TrainConfig:
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise RunError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    try:
        return dataclasses.replace(base, **options)
    except ValueError as e:
        raise RunError(str(e)) from None


# ---------------------------------------------------------------- the run folder


def prepare_folder(out, spec: RunSpec, mode: Literal["new", "resume", "overwrite"]) -> dict | None:
    """Apply the folder rules; return the state to resume from (None for a fresh run)."""
    out = Path(out)
    holds_run = (out / RUN_FILE).exists()
    if mode == "resume":
        if not holds_run:
            raise RunError(f"{out}: nothing to resume (no {RUN_FILE})")
        state = _load_state(out)
        if state is not None and spec.train.epochs < state["epochs_completed"]:
            raise RunError(f"{out}: the run has completed {state['epochs_completed']} epochs; --epochs {spec.train.epochs} would shorten it")
        _write_json(out / RUN_FILE, spec.to_json())  # epochs or the store's path may have changed
        return state
    if out.exists() and any(out.iterdir()):
        if not holds_run:
            raise RunError(f"{out}: not empty and not a run folder; choose another --out")
        if mode != "overwrite":
            recorded = load_run_spec(out)
            raise RunError(
                f"{out}: holds a run ({recorded.model} on {recorded.data['dataset']}); "
                "use --resume to continue it or --overwrite to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / RUN_FILE, spec.to_json())
    return None


def _load_state(out: Path) -> dict | None:
    path = out / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None  # None: killed before epoch 1


def _write_json(path: Path, values) -> None:
    """Write atomically (a reader sees the old or the new file, never a partial one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- training


def make_optimizer(train: TrainConfig):
    if train.optimizer == "adam":
        return keras.optimizers.Adam(train.lr, clipnorm=train.clipnorm)
    return keras.optimizers.SGD(train.lr, momentum=train.momentum, clipnorm=train.clipnorm)


def train(spec: RunSpec, out, *, mode: Literal["new", "resume", "overwrite"] = "new", plots: bool = True, verbose: int = 2) -> dict:
    """Train (or continue) the run `spec` in folder `out`, evaluate on test, return metrics.json."""
    out = Path(out)
    started = time.time()
    state = prepare_folder(out, spec, mode)
    t = spec.train
    info = open_store(spec.store)
    check_same_data(spec.data, info)
    splits = {name: Split(info, name, limit=t.limit, memory_limit=t.memory_limit) for name in ("train", "val", "test")}

    keras.utils.set_random_seed(t.seed)  # weight initialisers without their own seed
    done = 0 if state is None else state["epochs_completed"]
    if state is None:
        state = {"epochs_completed": 0, "best_epoch": None, "best_val_accuracy": None, "last_checkpoint": None,
                 "best_checkpoint": None, "train_images_per_s": [], "wall_time_s": 0.0, "sessions": []}
        model = spec.build_model()
        model.compile(optimizer=make_optimizer(t), loss=None)
    else:
        cfg.get_model_spec(spec.model)  # imports the model's module: load_model needs its classes registered
        model = keras.models.load_model(out / state["last_checkpoint"])
        set_seed_states(model, state["seed_states"])
    _remove_unreferenced_checkpoints(out, state)
    _truncate_log(out / LOG_FILE, done)
    # Each session's first epoch includes compilation; its backend may differ (a .keras
    # checkpoint resumes on either).
    state["sessions"].append({"backend": keras.backend.backend(), "first_epoch": done + 1})

    if done < t.epochs:
        train_batches = Batches(splits["train"], t.batch_size, shuffle=True, seed=t.seed, epoch=done, drop_remainder=True)
        val_batches = Batches(splits["val"], t.batch_size, shuffle=False)
        recorder = RunRecorder(out, train_batches, state, started)
        model.fit(train_batches, validation_data=val_batches, epochs=t.epochs, initial_epoch=done, callbacks=[recorder], verbose=verbose)
        recorder.close()
    elif (out / METRICS_FILE).exists():
        return json.loads((out / METRICS_FILE).read_text())  # complete: nothing to do

    best = spec.build_model()
    best.load_weights(out / state["best_checkpoint"])
    result = evaluate(best, splits["test"], batch_size=t.batch_size, mc_samples=t.mc_samples)
    state["wall_time_s"] += time.time() - started
    metrics = _metrics(spec, info, splits, state, result)
    _write_json(out / STATE_FILE, state)
    _write_json(out / METRICS_FILE, metrics)
    if plots:
        from visatt_models import plots as plotting

        plotting.plot_run(out, best, splits["test"], batch_size=t.batch_size)
    return metrics


class RunRecorder(keras.callbacks.Callback):
    """Per epoch: fixes the data order, times training, writes log/TensorBoard, commits checkpoints."""

    def __init__(self, out: Path, train_batches: Batches, state: dict, started: float):
        super().__init__()
        self.out, self.batches, self.state, self.started = out, train_batches, state, started
        self.writer = TensorBoardWriter(out / TENSORBOARD)
        (out / CHECKPOINTS).mkdir(exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        self.epoch_start = time.perf_counter()
        self.train_end = None

    def on_train_batch_end(self, batch, logs=None):
        if batch == len(self.batches) - 1:
            if logs and "loss" in logs:
                float(np.asarray(logs["loss"]))  # wait for asynchronous (JAX) work before timing
            self.train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self.train_end or now) - self.epoch_start
        n = epoch + 1  # epochs completed
        row = {"epoch": n, **{k: float(np.asarray(v)) for k, v in (logs or {}).items()}}
        row["train_images_per_s"] = self.batches.samples_per_epoch / train_seconds
        row["epoch_seconds"] = now - self.epoch_start
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state = self.state
        last = f"{CHECKPOINTS}/last-epoch-{n:04d}.keras"
        _atomic(lambda p: self.model.save(p), self.out / last)
        if "val_accuracy" not in row:
            raise RunError(f"the model reports no 'accuracy' metric (logs: {', '.join(row)}); runs select on val accuracy")
        val = row["val_accuracy"] if math.isfinite(row["val_accuracy"]) else -math.inf
        if state["best_val_accuracy"] is None or val > state["best_val_accuracy"]:  # ties keep the earlier
            state["best_checkpoint"] = f"{CHECKPOINTS}/best-epoch-{n:04d}.weights.h5"
            state["best_epoch"], state["best_val_accuracy"] = n, val
            _atomic(lambda p: self.model.save_weights(p), self.out / state["best_checkpoint"])
        _append_log(self.out / LOG_FILE, row)
        self.writer.scalars(n, row)
        state["epochs_completed"] = n
        state["last_checkpoint"] = last
        state["seed_states"] = get_seed_states(self.model)
        state["train_images_per_s"].append(row["train_images_per_s"])
        _write_json(self.out / STATE_FILE, {**state, "wall_time_s": state["wall_time_s"] + time.time() - self.started})
        _remove_unreferenced_checkpoints(self.out, state)

    def close(self):
        self.writer.close()


def _atomic(save, path: Path) -> None:
    """Run `save(tmp)` and rename the result into `path`."""
    suffix = "".join(path.suffixes)
    tmp = path.with_name(path.name[: -len(suffix)] + ".tmp" + suffix)  # Keras checks the suffix
    save(tmp)
    os.replace(tmp, path)


def _remove_unreferenced_checkpoints(out: Path, state: dict) -> None:
    keep = {state.get("last_checkpoint"), state.get("best_checkpoint")}
    folder = out / CHECKPOINTS
    if folder.exists():
        for f in folder.iterdir():
            if f"{CHECKPOINTS}/{f.name}" not in keep:
                f.unlink()


def get_seed_states(model) -> list:
    """States of every SeedGenerator in the model (Keras does not save them with the weights)."""
    return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in _seed_variables(model)]


def set_seed_states(model, states: list) -> None:
    variables = _seed_variables(model)
    if len(variables) != len(states):
        raise RunError(f"checkpoint has {len(states)} random generator states, the model {len(variables)}")
    for v, s in zip(variables, states):
        v.assign(np.asarray(s, dtype=keras.backend.standardize_dtype(v.dtype)))


def _seed_variables(model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _append_log(path: Path, row: dict) -> None:
    exists = path.exists()
    fields = list(row)
    if exists:
        with open(path, newline="") as f:
            fields = next(csv.reader(f))
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
        if not exists:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, epochs: int) -> None:
    """Drop log rows of epochs after the last committed one (an interrupted epoch)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= epochs]
    if len(kept) != len(rows):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


class TensorBoardWriter:
    """Epoch scalars as TensorBoard event files, written with TensorFlow's core summary op.

    `keras.callbacks.TensorBoard` needs the `tensorboard` package (not a dependency; only
    needed to *view* the files) and TensorFlow eager tensors; this writer needs neither and
    works whatever the Keras backend. On a JAX run TensorFlow is kept off the GPUs.
    """

    def __init__(self, folder: Path):
        self.writer = None
        try:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            if keras.backend.backend() != "tensorflow":
                try:
                    tf.config.set_visible_devices([], "GPU")
                except RuntimeError:  # TensorFlow was initialised already
                    pass
            self.tf = tf
            plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            self.metadata = summary_pb2.SummaryMetadata(plugin_data=plugin, data_class=summary_pb2.DATA_CLASS_SCALAR)
            self.writer = tf.summary.create_file_writer(str(folder))
        except Exception as e:  # the run must not fail for its TensorBoard copy of log.csv
            warnings.warn(f"TensorBoard event files disabled ({type(e).__name__}: {e}); log.csv has the same data")

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        with self.writer.as_default():
            for key, value in values.items():
                if key != "epoch":
                    tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                    self.tf.summary.write(tag, self.tf.constant(value, self.tf.float32), step=step, metadata=self.metadata)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------- evaluation


def evaluate(model, split: Split, *, batch_size: int = 256, mc_samples: int = 0) -> dict:
    """Accuracy of `model` on all samples of `split`, counted exactly (not a mean of batch means).

    For a model with `mc_probabilities` (RAM) and mc_samples > 0, also the accuracy of the
    class probabilities averaged over `mc_samples` location samples.
    """
    batches = Batches(split, batch_size, shuffle=False)
    correct, correct_mc, n = 0, 0, 0
    mc = mc_samples > 0 and hasattr(model, "mc_probabilities")
    for i in range(len(batches)):
        images, labels = batches[i]
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(images)["logits"])  # (B, K)
        correct += int(np.sum(logits.argmax(-1) == labels))
        if mc:
            probabilities = model.mc_probabilities(images, samples=mc_samples)  # (B, K)
            correct_mc += int(np.sum(np.asarray(probabilities).argmax(-1) == labels))
        n += len(labels)
    result = {"test_samples": n, "test_accuracy": correct / n, "test_error": 1 - correct / n}
    if mc:
        result.update(test_accuracy_mc=correct_mc / n, test_error_mc=1 - correct_mc / n, mc_samples=mc_samples)
    return result


def _metrics(spec: RunSpec, info: StoreInfo, splits: dict, state: dict, result: dict) -> dict:
    speeds = state["train_images_per_s"]
    compiling = {session["first_epoch"] for session in state["sessions"]}
    steady = [v for epoch, v in enumerate(speeds, 1) if epoch not in compiling] or speeds
    return {
        **result,
        "train_images_per_s": statistics.median(steady) if steady else None,
        "train_images_per_s_per_epoch": speeds,
        "best_epoch": state["best_epoch"],
        "best_val_accuracy": state["best_val_accuracy"],
        "epochs": spec.train.epochs,
        "epochs_completed": state["epochs_completed"],
        "checkpoint": state["best_checkpoint"],
        "model": spec.model,
        "preset": spec.preset,
        "config": spec.config,
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


def evaluate_run(out, *, store=None, mc_samples: int | None = None, limit: int | None = None, force: bool = False, batch_size: int | None = None) -> dict:
    """Re-evaluate the best checkpoint of the run in `out` on a store's test split.

    The store defaults to the one trained on; another store must hold the same dataset (name
    and recipe digest) unless `force`. The result is written to `out/eval-<UTC time>.json`.
    """
    out = Path(out)
    spec = load_run_spec(out)
    state = _load_state(out)
    if state is None or state["epochs_completed"] == 0:
        raise RunError(f"{out}: the run has no completed epoch to evaluate")
    info = open_store(store if store is not None else spec.store)
    same = (spec.data["dataset"], spec.data["recipe_digest"]) == (info.dataset, info.recipe_digest)
    if not same and not force:
        check_same_data(spec.data, info)  # raises, naming both datasets
    t = spec.train
    limit = t.limit if limit is None else limit
    keras.utils.set_random_seed(t.seed)
    model = spec.build_model()
    checkpoint = state["best_checkpoint"]
    model.load_weights(out / checkpoint)
    split = Split(info, "test", limit=limit, memory_limit=t.memory_limit)
    mc = t.mc_samples if mc_samples is None else mc_samples
    result = evaluate(model, split, batch_size=batch_size or t.batch_size, mc_samples=mc)
    result.update(
        run=str(out), checkpoint=checkpoint, model=spec.model, dataset=info.dataset, dataset_version=info.version,
        recipe_digest=info.recipe_digest, store=str(info.path), same_dataset_as_training=same, forced=force and not same,
        limit=limit, backend=keras.backend.backend(), machine=machine_info(),
        evaluated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    _write_json(out / f"eval-{stamp}.json", result)
    return result
