"""CNN baselines: the seed article's Keras `mnist_cnn` and a modern residual net, on any task.

`arch="seed"` is the classic Keras MNIST example the seed article used as its baseline:
conv32 3x3 ReLU, conv64 3x3 ReLU, max-pool 2, dropout 0.25, dense 128 ReLU, dropout 0.5,
softmax (here: logits; the softmax lives in the loss). On a 100x100 canvas its flatten layer
feeds 48*48*64 features into the dense layer (~19M parameters) and it has no way to find a
small digit among clutter other than memorising positions.

`arch="modern"` is what one would pick today for cluttered canvases: a small ResNet
(He et al. 2016) of conv-BN-ReLU basic blocks, each stage halving the resolution, ending in
global average pooling, so the classifier is translation invariant and the receptive field
(~90 px with four stages) covers the canvas. ~1.2M parameters with the default widths. For
sequences `pool="flatten"` keeps the final map's layout (which digit is where) and a hidden
dense layer reads it, like the fully connected layers of Goodfellow et al. 2013. With
`pool="columns"` (for the `ctc` sequence head) the stages after the second halve only the
height, the final map is averaged over its rows into a sequence of frames, one per column
band (4 pixels with two or more stages), left to right, and an optional bidirectional LSTM
(`rnn`) reads the frames in context before the per-frame softmax: CRNN (Shi et al. 2015) on
the residual backbone.

Both are feature extractors topped by the task's heads (`tasks.TaskHead`): one softmax on a
single-digit store; on a sequence store either the seed article's SVHN baseline (5 independent
11-way softmaxes, blank = class 10) or Goodfellow et al. 2013's length head (`--head length`).
They take raw uint8 images (B, H, W, C), scale them to [0, 1] inside and return the heads'
logits (`{"logits": (B, K)}` on a digit task). The loss is the task's (`base.VisattModel`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import keras
from keras import layers, ops

from visatt_models.base import VisattModel, policy_scope
from visatt_models.config import check_rates
from visatt_models.tasks import TaskHead

_PACKAGE = "visatt"
DEFAULT_WIDTHS = {"seed": (32, 64), "modern": (32, 64, 128, 256)}
# Keras' default 0.99 keeps 0.99^n of the initial variance 1 after n steps (1.5% after 420):
# next to the tiny activation variances of sparse canvases that wrecks inference for the first
# thousands of steps. 0.9 (PyTorch's default) forgets the initial value within ~50 steps.
BN_MOMENTUM = 0.9
# pool="columns": the stages that halve the width too (then one frame per 4-pixel column band).
COLUMN_STAGES = 2


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """CNN hyper-parameters.

    arch: "seed" (Keras mnist_cnn) or "modern" (residual net).
    widths: seed: the two conv widths; modern: stem width then one entry per stage (each stage
        halves the resolution). Empty means the arch's default (`DEFAULT_WIDTHS`).
    pool: modern only: "average" (global average pooling: translation invariant, for one digit),
        "flatten" (keeps where each feature is: a multi-digit head must know which digit
        comes first, as Goodfellow et al.'s fully connected layers do) or "columns" (frames of
        column bands, for the sequence task's `ctc` head: stages after the second stride by 2
        in height only, and the final map is averaged over its rows; 4-pixel bands with two or
        more stages, 2-pixel with one).
    dense: width of the hidden dense layer (ReLU) before the heads; None: the arch's default
        (seed 128, modern none); 0: none.
    dropout: seed: dropout after the conv block (0.25); modern: dropout before the hidden dense
        layer (or the heads).
    dense_dropout: dropout after the hidden dense layer (seed: 0.5).
    blocks: modern only: basic blocks per stage.
    rnn: `pool="columns"` only: units per direction of a bidirectional LSTM over the frames
        (0: none), dropout `dense_dropout` after it; `dense` then applies to each frame.
    full_res_stages: modern only: the first this many stages keep the resolution (stride 1)
        and the later ones stride as above, so every map after the stem is twice as large each
        way (a 13-pixel digit stays 13 pixels wide into the first stage instead of ~6) at about
        3x the FLOPs; the frames of `pool="columns"` stay one per 4-pixel band. 0: none.
    """

    arch: Literal["seed", "modern"] = "seed"
    widths: tuple[int, ...] = ()
    pool: Literal["average", "flatten", "columns"] = "average"
    dense: int | None = None
    dropout: float = 0.25
    dense_dropout: float = 0.5
    blocks: int = 1
    rnn: int = 0
    full_res_stages: int = 0

    def __post_init__(self):
        if self.arch not in DEFAULT_WIDTHS:
            raise ValueError(f"arch must be one of {sorted(DEFAULT_WIDTHS)}, got {self.arch!r}")
        if not self.widths:  # resolve here so the saved config names the real widths
            object.__setattr__(self, "widths", DEFAULT_WIDTHS[self.arch])
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.dense is None:
            object.__setattr__(self, "dense", 128 if self.arch == "seed" else 0)
        if self.arch == "seed" and len(self.widths) != 2:
            raise ValueError(f"the seed CNN has exactly 2 conv widths, got {self.widths}")
        if self.arch == "seed" and self.dense < 1:
            raise ValueError("the seed CNN has a hidden dense layer (dense >= 1)")
        if self.arch == "modern" and len(self.widths) < 2:
            raise ValueError(f"the modern CNN needs a stem width and at least one stage, got {self.widths}")
        if self.pool not in ("average", "flatten", "columns"):
            raise ValueError(f"pool must be 'average', 'flatten' or 'columns', got {self.pool!r}")
        if any(w < 1 for w in self.widths) or self.dense < 0 or self.blocks < 1 or self.rnn < 0:
            raise ValueError("widths and blocks must be positive, dense and rnn non-negative")
        if self.pool == "columns" and self.arch != "modern":
            raise ValueError("pool='columns' is the modern CNN's (arch=modern)")
        if self.rnn and self.pool != "columns":
            raise ValueError("rnn reads frames: it needs pool='columns'")
        if self.full_res_stages and (self.arch != "modern" or not 0 < self.full_res_stages < len(self.widths) - 1):
            raise ValueError(f"full_res_stages is the modern CNN's: 0 to its stages less one ({len(self.widths) - 2}), "
                             f"got {self.full_res_stages}")
        check_rates(self, "dropout", "dense_dropout")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBN(layers.Layer):
    """conv k x k (no bias) -> batch norm -> ReLU (unless relu=False)."""

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1, relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.relu = filters, kernel_size, strides, relu
        self.conv = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                                  dtype=self.dtype_policy)
        self.bn = layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=self.dtype_policy)

    def call(self, x, training=False):
        y = self.bn(self.conv(x), training=training)
        return ops.relu(y) if self.relu else y

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "relu": self.relu,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BasicBlock(layers.Layer):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN and a shortcut.

    The shortcut is the identity, or when the shape changes a 2x2 average pool and a 1x1
    conv-BN (the "ResNet-D" shortcut of He et al. 2019), not a strided 1x1 conv: besides
    seeing every input pixel, it avoids a TensorFlow 2.21 oneDNN CPU crash (heap corruption
    in the backward pass of a stride-2 1x1 conv at odd batch sizes).

    (B, H, W, C_in) -> (B, ceil(H / strides), ceil(W / strides), filters).
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.strides = filters, strides
        self.conv1 = ConvBN(filters, 3, strides, dtype=self.dtype_policy)
        self.conv2 = layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=self.dtype_policy)
        self.bn2 = layers.BatchNormalization(momentum=BN_MOMENTUM, gamma_initializer="zeros",  # block starts as identity
                                             dtype=self.dtype_policy)
        self.pool = None
        self.project = None

    def build(self, input_shape):
        if self.strides != 1:
            self.pool = layers.AveragePooling2D(self.strides, padding="same", dtype=self.dtype_policy)
        if self.strides != 1 or input_shape[-1] != self.filters:
            self.project = ConvBN(self.filters, 1, relu=False, dtype=self.dtype_policy)

    def call(self, x, training=False):
        y = self.bn2(self.conv2(self.conv1(x, training=training)), training=training)
        shortcut = x if self.pool is None else self.pool(x)
        if self.project is not None:
            shortcut = self.project(shortcut, training=training)
        return ops.relu(y + shortcut)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def conv_stack(filters, kernels, seed, prefix, pool=True):
    """conv (ReLU, 'same', Glorot-uniform seeded `seed + i`) [+ 2x2 max-pool] per entry of
    `filters`; `kernels` is one size for all or one per conv."""
    kernels = [kernels] * len(filters) if isinstance(kernels, int) else list(kernels)
    stack = []
    for i, (f, k) in enumerate(zip(filters, kernels)):
        stack.append(layers.Conv2D(f, k, padding="same", activation="relu",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
                                   name=f"{prefix}_conv{i}"))
        if pool:
            stack.append(layers.MaxPooling2D(2, name=f"{prefix}_pool{i}"))
    return stack


def feature_layers(c: CNNConfig) -> list:
    """The feature extractor of `c`: images in [0, 1] (B, H, W, C) -> features (B, F)."""
    if c.arch == "seed":
        return [
            layers.Conv2D(c.widths[0], 3, activation="relu"),
            layers.Conv2D(c.widths[1], 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(c.dropout),
            layers.Flatten(),
            layers.Dense(c.dense, activation="relu"),
            layers.Dropout(c.dense_dropout),
        ]
    features = [ConvBN(c.widths[0])]  # stem at full resolution
    for stage, width in enumerate(c.widths[1:]):
        strided = stage - c.full_res_stages  # strided stages before this one (negative: full resolution)
        strides = 1 if strided < 0 else (2, 1) if c.pool == "columns" and strided >= COLUMN_STAGES else 2
        features.append(BasicBlock(width, strides=strides))
        features.extend(BasicBlock(width) for _ in range(c.blocks - 1))
    pool = {"average": layers.GlobalAveragePooling2D, "flatten": layers.Flatten, "columns": ColumnPool}[c.pool]
    features += [pool(), layers.Dropout(c.dropout)]
    if c.rnn:
        features += [layers.Bidirectional(layers.LSTM(c.rnn, return_sequences=True)), layers.Dropout(c.dense_dropout)]
    if c.dense:
        features += [layers.Dense(c.dense, activation="relu"), layers.Dropout(c.dense_dropout)]
    return features


def check_frames(task, frames: bool) -> None:
    """Raise ValueError unless a model emits frames (`pool="columns"`) exactly when `task` has the
    per-frame `ctc` head."""
    ctc = getattr(task, "head", None) == "ctc"
    if ctc and not frames:
        raise ValueError("the ctc head reads a sequence of frames: set pool=columns")
    if frames and not ctc:
        raise ValueError("pool=columns makes frames for the ctc head of a sequence store: add --head ctc")


def column_frames(width: int, stages: int) -> int:
    """Frames of a `pool="columns"` backbone with `stages` strided stages on images `width` pixels wide."""
    for _ in range(min(stages, COLUMN_STAGES)):
        width = math.ceil(width / 2)
    return width


def check_column_frames(task, width: int, stages: int) -> None:
    """Raise ValueError when `width`-pixel-wide input gives the ctc head too few frames."""
    frames = column_frames(width, stages)
    if frames < task.min_frames:
        raise ValueError(f"the ctc head needs at least {task.min_frames} frames for {task.max_length} digits; "
                         f"{width}-pixel-wide images give {frames}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ColumnPool(layers.Layer):
    """(B, H, W, C) -> (B, W, C): the mean over rows, one frame per column, left to right."""

    def call(self, x):
        return ops.mean(x, axis=1)


def apply_layers(stack, x, training):
    """Run `stack` on x, passing `training` explicitly: Keras' call context does not reach
    sublayers when a trainer runs `call` directly (JAX's stateless train step does), and dropout
    and batch norm would silently stay in inference mode."""
    for layer in stack:
        x = layer(x, training=training)
    return x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CNN(VisattModel):
    """CNN of uint8 images (B, H, W, C) -> the task's heads ({"logits": (B, K)} for digits)."""

    config_cls = CNNConfig
    mixed_precision = True

    def __init__(self, config: CNNConfig | None = None, task=None, **kwargs):
        super().__init__(config, task, **kwargs)
        with policy_scope(self.dtype_policy):
            self.features = feature_layers(self.config)
        self.classifier = TaskHead(self.task, name="classifier")  # float32

    @classmethod
    def makes_frames(cls, config) -> bool:
        return config is not None and config.pool == "columns"

    @classmethod
    def check_task(cls, task, config=None) -> None:
        check_frames(task, cls.makes_frames(config))

    @classmethod
    def check_input(cls, task, config, image_shape) -> None:
        if cls.makes_frames(config):
            check_column_frames(task, image_shape[1], len(config.widths) - 1 - config.full_res_stages)

    def call(self, images, training=False):
        x = ops.cast(images, "float32") / 255.0  # (B, H, W, C) in [0, 1]
        return self.classifier(apply_layers(self.features, x, training))  # the task's heads
