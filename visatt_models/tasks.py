"""Tasks: what the labels of a store are, which heads a model needs, the loss, decoding, counting.

A model is architecture only: it turns images into features and asks its task for the heads
that turn features into logits (`TaskHead`), and for the loss on those logits. Everything that
depends on the label layout lives here, once:

    task = task_from_store(info)                  # DigitTask or SequenceTask, from the store's attributes
    head = TaskHead(task)                         # features (B, F) -> {"logits": ...} or {"digit_logits": ...}
    loss = task.loss(labels, outputs)             # (B,) per sample, keras.ops (any backend)
    predictions = task.decode(log_probabilities)  # (B,) digits or (B, P) padded sequences
    counts = task.count(predictions, labels)      # exact integer counts over samples
    task.summarise(counts)                        # {"accuracy": ...} or {"sequence_accuracy": ...}

Two tasks:

- `DigitTask`: one label per image, `num_classes` classes (the MNIST canvases). Head: `logits`
  (B, K). Metric: `accuracy`.
- `SequenceTask`: up to `max_length` digits, stored left to right and padded with the blank class
  `BLANK = num_classes` (10), as `svhn*`, `mnist-sequences` and `mnist-pairs` hold them
  (`[1, 0, 5, 10, 10]`). Two heads:
  * `independent` (the seed article's SVHN baseline): one softmax over the digits and the blank
    per position, `digit_logits` (B, P, K + 1); loss: the sum of the P cross-entropies, the blank
    included. A prediction is read up to its first blank. A model may emit more positions than
    the store holds (P >= max_length, e.g. DRAM's end-of-sequence step): labels are padded with
    blanks to P.
  * `length` (Goodfellow et al. 2013, Sec. 3): a length softmax over 0..max_length and
    "more" (`length_logits` (B, max_length + 2)) plus one softmax over the digits per position
    (`digit_logits` (B, max_length, K)); loss: -log P(L) - sum_{i < L} log P(s_i), so absent
    positions cost nothing. Decoding takes the most probable sequence, argmax over L and s of
    log P(L) + sum_{i < L} log P(s_i) (Goodfellow's decoder; the best digits do not depend on L,
    so this is linear in max_length). "More than max_length" cannot be written in the label
    layout and is never decoded.
  * `ctc` (Graves et al. 2006, as in CRNN, Shi et al. 2015): one softmax over the digits and
    the blank per frame (a column band of the image, left to right), `ctc_logits` (B, T, K + 1)
    with T frames fixed by the model; loss: connectionist temporal classification, -log of the
    summed probability of every frame labelling that collapses (merge repeats, drop blanks) to
    the label. No position is tied to a place on the canvas, so a digit is read by the same
    weights wherever it is. Decoding: the best label per frame, collapsed (greedy). Needs
    T >= 2 max_length - 1 frames (five equal digits need a blank between each two). No `reverse`:
    frames and labels both reversed give the same model.
  `reverse=True` trains a model that reads right to left (DRAM's backward model): its loss sees
  each label's digits reversed, and decoding turns its predictions back into reading order.
  Metrics: `sequence_accuracy` (the length and every digit right, no partial credit: the metric
  of Goodfellow et al. and the DRAM and STN papers), `digit_accuracy` (per position, over the
  digits present in the labels) and `length_accuracy`.

Training metrics are `keras.metrics.Mean` trackers updated with per-sample values, so an
evaluation's figures are exact counts over samples whatever the batch sizes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import keras
import numpy as np
from keras import layers, ops

from visatt_models.config import HEADS

BLANK = 10  # the padding class of sequence labels: one past the last digit
MAX_LENGTH = 5  # label positions of the sequence stores


@dataclasses.dataclass(frozen=True)
class DigitTask:
    """One label per image: integer classes 0..num_classes-1, labels (B,)."""

    num_classes: int = 10
    kind: ClassVar[str] = "digit"
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy",)
    selection_metric: ClassVar[str] = "accuracy"  # the val metric that picks the best checkpoint

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")

    def head_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"logits": (self.num_classes,)}

    def loss(self, y, outputs):
        """Softmax cross-entropy per sample (B,)."""
        y = ops.cast(ops.reshape(y, (-1,)), "int32")  # (B,)
        return keras.losses.sparse_categorical_crossentropy(y, outputs["logits"], from_logits=True)

    def decode(self, log_probs: dict):
        """Most probable class (B,) from `{"logits": (B, K)}` log-probabilities."""
        return ops.argmax(log_probs["logits"], axis=-1)

    def per_sample(self, y, predictions) -> dict:
        """What the metrics average: {name: (values (B,) or (B, P), mask of the same shape or None)}."""
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        return {"accuracy": (ops.cast(ops.cast(predictions, "int32") == y, "float32"), None)}

    def count(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, int]:
        labels = np.asarray(labels).reshape(-1)
        return {"samples": len(labels), "right": int(np.sum(np.asarray(predictions) == labels))}

    def summarise(self, counts: dict) -> dict[str, float]:
        accuracy = counts["right"] / counts["samples"]
        return {"accuracy": accuracy, "error": 1.0 - accuracy}

    def format(self, value) -> str:
        return str(int(np.asarray(value).reshape(-1)[0]))


@dataclasses.dataclass(frozen=True)
class SequenceTask:
    """Up to `max_length` digits per image, labels (B, max_length) padded with BLANK."""

    max_length: int = MAX_LENGTH
    num_classes: int = 10  # digits; the blank class is `num_classes`
    head: Literal["independent", "length", "ctc"] = "independent"
    reverse: bool = False  # the model reads right to left: it is trained on reversed labels
    kind: ClassVar[str] = "sequence"
    metric_names: ClassVar[tuple[str, ...]] = ("sequence_accuracy", "digit_accuracy", "length_accuracy")
    selection_metric: ClassVar[str] = "sequence_accuracy"

    def __post_init__(self):
        if self.max_length < 1 or self.num_classes < 2:
            raise ValueError(f"max_length >= 1 and num_classes >= 2 required, got {self.max_length}, {self.num_classes}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "ctc" and self.reverse:
            raise ValueError("the ctc head reads its frames left to right; read right to left (frames and labels "
                             "reversed) it would be the same model")

    @property
    def blank(self) -> int:
        return self.num_classes

    @property
    def min_frames(self) -> int:
        """Frames a `ctc` head needs: a blank between equal digits, and room for one digit too many."""
        return max(2 * self.max_length - 1, self.max_length + 1)

    def head_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Each head's shape per sample; None: one row per frame of the model's features."""
        if self.head == "independent":
            return {"digit_logits": (self.max_length, self.num_classes + 1)}
        if self.head == "ctc":
            return {"ctc_logits": (None, self.num_classes + 1)}
        return {"length_logits": (self.max_length + 2,), "digit_logits": (self.max_length, self.num_classes)}

    def _pad(self, y, positions: int):
        """(B, L) int32 sequences padded with blanks (or cut) to `positions` columns."""
        y = ops.cast(y, "int32")
        extra = positions - y.shape[1]
        if extra > 0:
            return ops.concatenate([y, ops.full((ops.shape(y)[0], extra), self.blank, "int32")], axis=1)
        return y[:, :positions]

    def reversed_digits(self, y):
        """Each row's digits in reverse order, blanks staying at the end: [1, 2, 3, B] -> [3, 2, 1, B].

        Its own inverse. Used on labels when `reverse` (and on predictions, to read them back)."""
        y = ops.cast(y, "int32")
        length = ops.sum(ops.cast(y != self.blank, "int32"), axis=1, keepdims=True)  # (B, 1)
        position = ops.arange(y.shape[1], dtype="int32")[None, :]  # (1, P)
        index = ops.where(position < length, length - 1 - position, position)  # (B, P)
        return ops.take_along_axis(y, index, axis=1)

    def labels_for(self, y, positions: int):
        """The labels a model emitting `positions` steps is trained on: (B, P) int32, in the model's
        reading order (reversed when `reverse`), padded with blanks (a model may emit an
        end-of-sequence step after the last digit, as DRAM does) or cut to P."""
        y = self.reversed_digits(y) if self.reverse else ops.cast(y, "int32")
        return self._pad(y, positions)

    def loss(self, y, outputs):
        """Per-sample loss (B,): summed position cross-entropies (independent) or
        -log P(L) - sum of the present digits' log P(s_i) (length) or the CTC loss (ctc)."""
        if self.head == "ctc":
            logits = outputs["ctc_logits"]  # (B, T, K + 1)
            y = ops.cast(y, "int32")  # (B, L)
            length = ops.sum(ops.cast(y != self.blank, "int32"), axis=1)
            frames = ops.full((ops.shape(logits)[0],), logits.shape[1], "int32")
            return ops.ctc_loss(y, logits, length, frames, mask_index=self.blank)
        digit_logits = outputs["digit_logits"]  # (B, P, K + 1) or (B, L, K)
        y = self.labels_for(y, digit_logits.shape[1])  # (B, P)
        if self.head == "independent":
            ce = keras.losses.sparse_categorical_crossentropy(y, digit_logits, from_logits=True)  # (B, P)
            return ops.sum(ce, axis=1)
        present = y != self.blank  # (B, L)
        length = ops.sum(ops.cast(present, "int32"), axis=1)  # (B,)
        length_ce = keras.losses.sparse_categorical_crossentropy(length, outputs["length_logits"], from_logits=True)
        digits = ops.where(present, y, ops.zeros_like(y))  # blanks -> any valid class, masked below
        digit_ce = keras.losses.sparse_categorical_crossentropy(digits, digit_logits, from_logits=True)  # (B, L)
        return length_ce + ops.sum(digit_ce * ops.cast(present, digit_ce.dtype), axis=1)

    def decode(self, log_probs: dict):
        """Predicted sequences in reading order, padded with blanks: (B, max(P, max_length)), or
        (B, max_length + 1) for the ctc head, from the heads' log-probabilities (the length
        head's joint argmax needs normalised log-probabilities; the independent heads' argmax
        would accept logits too)."""
        if self.head == "ctc":
            return self._collapse(ops.cast(ops.argmax(log_probs["ctc_logits"], axis=-1), "int32"))
        digit = log_probs["digit_logits"]
        if self.head == "independent":
            best = ops.cast(ops.argmax(digit, axis=-1), "int32")  # (B, P)
            # Read up to the first blank: everything after it is blank too.
            after = ops.cumsum(ops.cast(best == self.blank, "int32"), axis=1) > 0
            decoded = ops.where(after, self.blank, best)
        else:
            best = ops.cast(ops.argmax(digit, axis=-1), "int32")  # (B, L) best digit per position
            best_lp = ops.max(digit, axis=-1)  # (B, L)
            prefix = ops.concatenate([ops.zeros_like(best_lp[:, :1]), ops.cumsum(best_lp, axis=1)], axis=1)  # (B, L + 1)
            length = ops.argmax(log_probs["length_logits"][:, : self.max_length + 1] + prefix, axis=-1)  # (B,)
            position = ops.arange(self.max_length)[None, :]  # (1, L)
            decoded = ops.where(position < ops.cast(length, "int32")[:, None], best, self.blank)
        decoded = self._pad(decoded, max(decoded.shape[1], self.max_length))
        return self.reversed_digits(decoded) if self.reverse else decoded

    def _collapse(self, best):
        """CTC's collapse of frame labels (B, T): repeats merged, blanks dropped, the digits moved
        to the front and padded with blanks -> (B, max_length + 1) (a sixth digit marks a
        sequence too long, which then counts as wrong)."""
        previous = ops.concatenate([ops.full((ops.shape(best)[0], 1), self.blank, "int32"), best[:, :-1]], axis=1)
        keep = ops.logical_and(best != self.blank, best != previous)  # (B, T)
        slot = ops.cumsum(ops.cast(keep, "int32"), axis=1) - 1  # where each kept label goes
        width = self.max_length + 1
        into = ops.one_hot(ops.where(keep, slot, width), width + 1, dtype="int32")[:, :, :width]  # (B, T, width)
        filled = ops.sum(into, axis=1)  # (B, width): 1 where a digit landed (labels past `width` dropped)
        digits = ops.sum(into * best[:, :, None], axis=1)
        return ops.where(filled > 0, digits, self.blank)

    def per_sample(self, y, predictions) -> dict:
        predictions = ops.cast(predictions, "int32")  # (B, P)
        y = self._pad(y, predictions.shape[1])  # (B, P)
        same = predictions == y
        present = ops.cast(y != self.blank, "float32")  # (B, P)
        length = ops.sum(ops.cast(y != self.blank, "int32"), axis=1)
        predicted_length = ops.sum(ops.cast(predictions != self.blank, "int32"), axis=1)
        return {
            "sequence_accuracy": (ops.cast(ops.all(same, axis=1), "float32"), None),
            "digit_accuracy": (ops.cast(same, "float32"), present),
            "length_accuracy": (ops.cast(length == predicted_length, "float32"), None),
        }

    def count(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, int]:
        predictions = np.asarray(predictions)
        labels = np.asarray(labels, np.int64)
        if predictions.shape[1] > labels.shape[1]:
            pad = np.full((len(labels), predictions.shape[1] - labels.shape[1]), self.blank, np.int64)
            labels = np.concatenate([labels, pad], axis=1)
        present = labels != self.blank
        return {
            "samples": len(labels),
            "sequences_right": int(np.sum(np.all(predictions == labels, axis=1))),
            "digits": int(present.sum()),
            "digits_right": int(np.sum((predictions == labels) & present)),
            "lengths_right": int(np.sum(present.sum(1) == (predictions != self.blank).sum(1))),
        }

    def summarise(self, counts: dict) -> dict[str, float]:
        accuracy = counts["sequences_right"] / counts["samples"]
        return {
            "sequence_accuracy": accuracy,
            "sequence_error": 1.0 - accuracy,
            "digit_accuracy": counts["digits_right"] / max(counts["digits"], 1),
            "length_accuracy": counts["lengths_right"] / counts["samples"],
        }

    def format(self, value) -> str:
        """A padded sequence as the number it spells ("" for no digit)."""
        return "".join(str(int(d)) for d in np.asarray(value).reshape(-1) if d != self.blank)


Task = DigitTask | SequenceTask
_TASKS = {"digit": DigitTask, "sequence": SequenceTask}


def task_to_dict(task: Task) -> dict:
    return {"kind": task.kind, **dataclasses.asdict(task)}


def task_from_dict(values: dict) -> Task:
    values = dict(values)
    kind = values.pop("kind")
    if kind not in _TASKS:
        raise ValueError(f"unknown task {kind!r}; known: {', '.join(_TASKS)}")
    return _TASKS[kind](**values)


def task_from_store(info, *, head: str | None = None, reverse: bool = False) -> Task:
    """The task of a store (`data.StoreInfo`): its `task`, `num_classes` and `max_length` attributes.

    `head` chooses the sequence head ("independent" by default) and `reverse` trains a
    right-to-left reader; a digit store has neither.
    """
    if info.task == "digit":
        if head is not None or reverse:
            raise ValueError(f"{info.path}: a single-digit store has no sequence head or reading order")
        return DigitTask(num_classes=info.num_classes)
    if info.task == "sequence":
        return SequenceTask(max_length=info.max_length, num_classes=info.num_classes, head=head or "independent", reverse=reverse)
    raise ValueError(f"{info.path}: unknown task {info.task!r}")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (numpy, float64)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def head_log_probs(task: Task, outputs: dict) -> dict[str, np.ndarray]:
    """Log-probabilities (float64) of every head of `task` in a model's (numpy) outputs."""
    return {name: log_softmax(outputs[name]) for name in task.head_shapes()}


def decode_numpy(task: Task, log_probs: dict) -> np.ndarray:
    """`task.decode` on numpy inputs, as a numpy array (one implementation for graph and host)."""
    return np.asarray(keras.ops.convert_to_numpy(task.decode(log_probs)))


@keras.saving.register_keras_serializable(package="visatt")
class TaskHead(layers.Layer):
    """The task's heads on a feature vector: features (B, F) -> {head name: logits}.

    One Dense layer per head, all positions of a sequence head in one matrix reshaped to
    (B, P, classes). A per-frame head (`ctc`) takes a sequence of features (B, T, F) and applies
    its Dense layer to each frame: (B, T, classes). `seed`: the heads' Glorot-uniform
    initialisers get seeds `seed`, `seed + 1`, ... (None: Keras' global seeding, as a plain
    `Dense` has).
    """

    def __init__(self, task: Task, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # float32 logits under a mixed model too: the losses read them
        super().__init__(**kwargs)
        self.task, self.seed = task, seed
        self.shapes = task.head_shapes()
        for i, (name, shape) in enumerate(self.shapes.items()):
            kernel = "glorot_uniform" if seed is None else keras.initializers.GlorotUniform(seed=seed + i)
            units = shape[-1] if shape[0] is None else int(np.prod(shape))
            setattr(self, f"fc_{name}", layers.Dense(units, kernel_initializer=kernel, name=name, dtype=self.dtype_policy))

    def build(self, features_shape):
        per_frame = any(shape[0] is None for shape in self.shapes.values())
        if per_frame and (len(features_shape) != 3 or features_shape[1] < self.task.min_frames):
            raise ValueError(f"the {self.task.head} head needs a sequence of at least {self.task.min_frames} feature frames "
                             f"(B, T, F), got features {tuple(features_shape)}")
        if not per_frame and len(features_shape) != 2:
            raise ValueError(f"the {getattr(self.task, 'head', 'digit')} head needs a feature vector (B, F), got features "
                             f"{tuple(features_shape)}")
        for name in self.shapes:
            getattr(self, f"fc_{name}").build(features_shape)
        self.built = True

    def call(self, features):
        return {name: getattr(self, f"fc_{name}")(features) if shape[0] is None
                else ops.reshape(getattr(self, f"fc_{name}")(features), (-1, *shape)) for name, shape in self.shapes.items()}

    def get_config(self):
        return {**super().get_config(), "task": task_to_dict(self.task), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "task": task_from_dict(config["task"])})
