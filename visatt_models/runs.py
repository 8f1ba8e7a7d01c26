"""The run folder: what a run is (run.json), how far it got (state.json), checkpoints, the log.

    run.json          RunSpec: model, preset, model config, task, training options, the store's identity
    state.json        completed epochs, best epoch and its val figure, checkpoint files, timings
    checkpoints/      last-epoch-NNNN.keras (model, optimizer and random-generator state, for
                      resuming) and best-epoch-NNNN.weights.h5 (the weights tested)
    log.csv           one row per epoch; tensorboard/ the same scalars as event files
    metrics.json      the result (docs/models.md lists every field)

Folder rules: a new run needs an empty or absent folder; a folder holding a run is continued
only with `mode="resume"` and replaced only with `mode="overwrite"`; a non-empty folder that
holds no run (no run.json) is never touched.

Every completed epoch is committed atomically: checkpoint files first, then state.json, which
names them. A run killed at any moment resumes from the end of its last completed epoch.
This module knows nothing of training; `train.py` runs the fit loop and calls `commit_epoch`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from pipelines.store import first_line
from visatt_models import config as cfg
from visatt_models import registry
from visatt_models.config import TrainConfig
from visatt_models.tasks import Task, task_from_dict

RUN_FILE, STATE_FILE, METRICS_FILE, LOG_FILE = "run.json", "state.json", "metrics.json", "log.csv"
CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"
FORMAT = 2  # version of the run folder layout, recorded in run.json (2: the task is recorded)


class RunError(Exception):
    """A run folder, store or option is not usable for what was asked (one-line message)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; stored as run.json."""

    model: str
    preset: str | None
    config: dict  # the model config's fields
    task: dict  # tasks.task_to_dict of the store's task
    train: TrainConfig
    store: str  # absolute path of the store
    data: dict  # the store's identity: dataset, version, recipe_digest
    image_shape: tuple[int, ...]  # (H, W, C) of the store's images
    resample: str = "bilinear"  # the PIL filter that resized the store's images (predicting on files uses it)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(h, w, C) of the model's input: the store's images, cropped when the run crops."""
        crop = self.train.crop
        return self.image_shape if crop is None else (*crop, self.image_shape[2])

    def to_json(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, values: dict, where="run.json") -> "RunSpec":
        if values.get("format") != FORMAT:
            raise RunError(f"{where}: run folder format {values.get('format')} is not {FORMAT} (written by an "
                           "older visatt, whose checkpoints this version cannot load); train it again")
        values = {k: v for k, v in values.items() if k != "format"}
        values["train"] = cfg.config_from_dict(TrainConfig, values["train"])
        values["image_shape"] = tuple(values["image_shape"])
        return cls(**values)

    def model_config(self):
        return cfg.config_from_dict(registry.get_model_spec(self.model).config_cls, self.config)

    def task_object(self) -> Task:
        return task_from_dict(self.task)

    def build_model(self):
        """A fresh model of this spec, built for its input shape."""
        model = registry.get_model_spec(self.model).model_cls(self.model_config(), self.task_object(),
                                                              dtype=self.train.precision)
        model(np.zeros((1, *self.input_shape), np.uint8))  # create the weights
        return model


# How a stochastic model (RAM, DRAM) is validated after each epoch, which decides its best
# checkpoint: at its policy means. Runs begun before this existed validated one sampled pass and
# have no "val_pass" in their state; resuming one keeps that, so its log stays one series.
VAL_PASS = "deterministic"
OLD_VAL_PASS = "sampled"


def new_state() -> dict:
    return {"epochs_completed": 0, "best_epoch": None, "best_val": None, "last_checkpoint": None,
            "best_checkpoint": None, "train_images_per_s": [], "wall_time_s": 0.0, "sessions": [],
            "val_pass": VAL_PASS}


class RunFolder:
    """A run folder on disk: the folder rules, state, checkpoints and log."""

    def __init__(self, path):
        self.path = Path(path)

    def load_spec(self) -> RunSpec:
        path = self.path / RUN_FILE
        if not path.exists():
            raise RunError(f"{self.path}: no run here (no {RUN_FILE})")
        return RunSpec.from_json(json.loads(path.read_text()), where=str(path))

    def load_state(self) -> dict | None:
        path = self.path / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else None  # None: killed before epoch 1

    def prepare(self, spec: RunSpec, mode: Literal["new", "resume", "overwrite"]) -> dict | None:
        """Apply the folder rules; return the state to resume from (None for a fresh run)."""
        out = self.path
        holds_run = (out / RUN_FILE).exists()
        if mode == "resume":
            if not holds_run:
                raise RunError(f"{out}: nothing to resume (no {RUN_FILE})")
            state = self.load_state()
            if state is not None and spec.train.epochs < state["epochs_completed"]:
                raise RunError(f"{out}: the run has completed {state['epochs_completed']} epochs; --epochs {spec.train.epochs} would shorten it")
            write_json(out / RUN_FILE, spec.to_json())  # epochs or the store's path may have changed
            return state
        if out.exists() and any(out.iterdir()):
            if not holds_run:
                raise RunError(f"{out}: not empty and not a run folder; choose another --out")
            if mode != "overwrite":
                recorded = json.loads((out / RUN_FILE).read_text())
                raise RunError(
                    f"{out}: holds a run ({recorded.get('model')} on {recorded.get('data', {}).get('dataset')}); "
                    "use --resume to continue it or --overwrite to replace it"
                )
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_FILE, spec.to_json())
        return None

    def start_session(self, state: dict, backend: str, devices: int = 1) -> None:
        """Drop what an interrupted epoch left behind and record the new session."""
        self.remove_unreferenced_checkpoints(state)
        self.truncate_log(state["epochs_completed"])
        # Each session's first epoch includes compilation; its backend may differ (a .keras
        # checkpoint resumes on either).
        state["sessions"].append({"backend": backend, "devices": devices, "first_epoch": state["epochs_completed"] + 1})

    def commit_epoch(self, model, state: dict, row: dict, selection: str, wall_time_s: float) -> None:
        """Write the epoch's checkpoints, log row and TensorBoard scalars, then state.json.

        `row` holds the epoch's logs; `row["val_" + selection]` decides the best checkpoint
        (ties keep the earlier epoch).
        """
        n = row["epoch"]
        (self.path / CHECKPOINTS).mkdir(exist_ok=True)
        last = f"{CHECKPOINTS}/last-epoch-{n:04d}.keras"
        _atomic(model.save, self.path / last)
        key = f"val_{selection}"
        if key not in row:
            raise RunError(f"the model reports no {selection!r} metric (logs: {', '.join(row)}); runs select on it")
        val = row[key] if np.isfinite(row[key]) else -np.inf
        if state["best_val"] is None or val > state["best_val"]:
            state["best_checkpoint"] = f"{CHECKPOINTS}/best-epoch-{n:04d}.weights.h5"
            state["best_epoch"], state["best_val"] = n, val
            _atomic(model.save_weights, self.path / state["best_checkpoint"])
        append_log(self.path / LOG_FILE, row)
        state["epochs_completed"] = n
        state["previous_checkpoint"] = state.get("last_checkpoint")  # kept: resume falls back to it
        state["last_checkpoint"] = last
        state["train_images_per_s"].append(row["train_images_per_s"])
        write_json(self.path / STATE_FILE, {**state, "wall_time_s": wall_time_s})
        self.remove_unreferenced_checkpoints(state)

    def remove_unreferenced_checkpoints(self, state: dict) -> None:
        keep = {state.get("last_checkpoint"), state.get("previous_checkpoint"), state.get("best_checkpoint")}
        folder = self.path / CHECKPOINTS
        if folder.exists():
            for f in folder.iterdir():
                if f"{CHECKPOINTS}/{f.name}" not in keep:
                    f.unlink()

    def truncate_log(self, epochs: int) -> None:
        """Drop log rows of epochs after the last committed one (an interrupted epoch)."""
        path = self.path / LOG_FILE
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= epochs]
        if len(kept) != len(rows):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows(kept)


def load_resumable(folder: RunFolder, state: dict):
    """The model of the last checkpoint (model, optimizer and generator states) and the state
    to resume from. A last checkpoint that does not load (truncated, emptied, missing) is
    reported on stderr and the run falls back to the epoch before it, whose checkpoint is kept
    for this: the state, log and speeds are cut back to that epoch, which is then trained again
    (the same batches and draws: the result is the same). Without an intact one: RunError."""
    import keras

    last = state.get("last_checkpoint")
    try:
        return keras.models.load_model(folder.path / last), state
    except Exception as e:
        problem = f"{folder.path / last}: unreadable checkpoint ({first_line(e)})"
    previous = state.get("previous_checkpoint")
    if not previous or not (folder.path / previous).exists():
        raise RunError(f"{problem}, and no earlier epoch's checkpoint to fall back to; start again with --overwrite")
    try:
        model = keras.models.load_model(folder.path / previous)
    except Exception as e:
        raise RunError(f"{problem}, and {folder.path / previous} does not load either ({first_line(e)})") from None
    epochs = state["epochs_completed"] - 1
    print(f"Warning: {problem}; resuming from epoch {epochs}", file=sys.stderr)
    state = {**state, "epochs_completed": epochs, "last_checkpoint": previous, "previous_checkpoint": None,
             "train_images_per_s": state["train_images_per_s"][:epochs]}
    if state.get("best_epoch") is not None and state["best_epoch"] > epochs:  # epoch n is trained again
        state.update(best_epoch=None, best_val=None, best_checkpoint=None)
    folder.truncate_log(epochs)
    return model, state


def load_weights_checked(model, path: Path) -> None:
    """`model.load_weights(path)`, with a one-line RunError naming a missing or damaged file."""
    if not Path(path).exists():
        raise RunError(f"{path}: checkpoint missing")
    try:
        model.load_weights(path)
    except Exception as e:
        raise RunError(f"{path}: unreadable checkpoint ({first_line(e)})") from None


def _atomic(save, path: Path) -> None:
    """Run `save(tmp)` and rename the result into `path`."""
    suffix = "".join(path.suffixes)
    tmp = path.with_name(path.name[: -len(suffix)] + ".tmp" + suffix)  # Keras checks the suffix
    save(tmp)
    os.replace(tmp, path)


def append_log(path: Path, row: dict) -> None:
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


def write_json(path: Path, values) -> None:
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


class TensorBoardWriter:
    """Epoch scalars as TensorBoard event files, written with TensorFlow's core summary op.

    `keras.callbacks.TensorBoard` needs the `tensorboard` package (not a dependency; only
    needed to *view* the files) and TensorFlow eager tensors; this writer needs neither and
    works whatever the Keras backend. On a JAX run TensorFlow is kept off the GPUs.
    """

    def __init__(self, folder: Path, backend: str):
        self.writer = None
        try:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            if backend != "tensorflow":
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
