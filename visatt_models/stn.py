"""Spatial Transformer Network (ST-CNN): Jaderberg, Simonyan, Zisserman, Kavukcuoglu, "Spatial
Transformer Networks", NIPS 2015 (arXiv:1506.02025).

    x (B, H, W, C) -> LocalisationNetwork -> theta (B, 2, 3)          (Sec. 3.1)
                   -> affine_grid(theta)   -> sampling grid            (Sec. 3.2, eq. 1)
                   -> bilinear_sample      -> V (B, h, w, C)           (Sec. 3.3, eq. 5)
                   -> a CNN's features     -> the task's heads (logits)

Everything is differentiable, so the localisation network learns from the classification loss
alone. The last localisation layer starts with zero weights and a bias equal to the identity
transform (or a centred zoom), as in the paper's experiments. On a sequence store this is the
paper's ST-CNN Single (Sec. 4.3): one transformer in front of the multi-digit CNN (the modern
CNN backbone with the task's sequence heads, `classifier="modern"`).

Typical use:

    model = STN(STNConfig(output_size=(60, 60)))
    model.compile(optimizer="adam")
    model.fit(images_uint8, labels)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
from keras import layers, ops

from visatt_models.base import VisattModel, policy_scope
from visatt_models.config import check_rates
from visatt_models.cnn import CNNConfig, apply_layers, check_column_frames, check_frames, conv_stack, feature_layers
from visatt_models.sampler import affine_grid, bilinear_sample
from visatt_models.tasks import TaskHead


@dataclasses.dataclass(frozen=True)
class STNConfig:
    """STN hyper-parameters (defaults: a small ST-CNN for single digits on canvases).

    loc_filters, loc_kernel: localisation convs (each ReLU + 2x2 max-pool); loc_dense: its
        hidden dense layers (ReLU) before the 6 affine outputs.
    init: "identity" (theta = I) or "zoom" (theta = diag(zoom, zoom): the output shows the
        central `zoom` fraction of the image, magnified).
    output_size: (h, w) of the transformed image; None = the input size.
    classifier: "convnet": convs `cls_filters` (each `cls_kernel`, ReLU + 2x2 max-pool) and a
        hidden dense layer `cls_dense`; "modern": the modern CNN backbone (`cnn.py`) with widths
        `cls_filters` (stem, then one stride-2 stage each) and `cls_blocks` blocks per stage,
        its final map flattened into the hidden dense layer `cls_dense` (the ST-CNN reads the
        digits' order from where they are). `dropout` before the heads (and, for "modern",
        before the hidden layer).
    cls_pool, cls_rnn: "modern" only: "flatten" (above) or "columns": frames of column bands
        for the sequence task's `ctc` head, read by a bidirectional LSTM of `cls_rnn` units per
        direction (0: none), then `cls_dense` per frame (0: none); see `cnn.CNNConfig`.
    """

    loc_filters: tuple[int, ...] = (20, 20)
    loc_kernel: int = 5
    loc_dense: tuple[int, ...] = (50,)
    init: Literal["identity", "zoom"] = "identity"
    zoom: float = 0.5
    output_size: tuple[int, int] | None = None
    classifier: Literal["convnet", "modern"] = "convnet"
    cls_filters: tuple[int, ...] = (32, 64)
    cls_kernel: int = 3
    cls_dense: int = 128
    cls_blocks: int = 1
    cls_pool: Literal["flatten", "columns"] = "flatten"
    cls_rnn: int = 0
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        # Tuples even after a JSON round trip (get_config / from_config gives lists).
        for name in ("loc_filters", "loc_dense", "cls_filters"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.output_size is not None:
            object.__setattr__(self, "output_size", tuple(int(v) for v in self.output_size))
            if len(self.output_size) != 2 or min(self.output_size) < 1:
                raise ValueError(f"output_size must be (h, w) >= 1, got {self.output_size}")
        if self.classifier not in ("convnet", "modern"):
            raise ValueError(f"classifier must be 'convnet' or 'modern', got {self.classifier!r}")
        if self.classifier == "modern" and len(self.cls_filters) < 2:
            raise ValueError(f"the modern classifier needs a stem width and at least one stage, got {self.cls_filters}")
        if self.cls_pool not in ("flatten", "columns") or (self.cls_pool == "columns" and self.classifier != "modern"):
            raise ValueError(f"cls_pool must be 'flatten' or, with the modern classifier, 'columns'; got {self.cls_pool!r}")
        if self.cls_rnn < 0 or (self.cls_rnn and self.cls_pool != "columns"):
            raise ValueError(f"cls_rnn reads frames: it needs cls_pool='columns' (and >= 0), got {self.cls_rnn}")
        if self.init not in ("identity", "zoom"):
            raise ValueError(f"init must be 'identity' or 'zoom', got {self.init!r}")
        if not self.zoom > 0:
            raise ValueError(f"zoom must be > 0, got {self.zoom}")
        check_rates(self, "dropout")


@keras.saving.register_keras_serializable(package="visatt")
class LocalisationNetwork(layers.Layer):
    """f_loc: U (B, H, W, C) -> theta (B, 2, 3) (Sec. 3.1).

    theta maps output (target) coordinates to input (source) coordinates, rows (x, y), in the
    normalised [-1, 1] convention of `sampler.affine_grid`. The final layer's weights start at
    zero and its bias at the initial transform, so training starts from identity / zoom.
    """

    def __init__(self, filters=(20, 20), kernel=5, dense=(50,), init="identity", zoom=0.5, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self._args = dict(filters=tuple(filters), kernel=kernel, dense=tuple(dense), init=init,
                          zoom=zoom, seed=seed)
        self.convs = conv_stack(filters, kernel, seed, "loc")
        self.flatten = layers.Flatten()
        self.hidden = [layers.Dense(d, activation="relu", name=f"loc_dense{i}",
                                    kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 50 + i))
                       for i, d in enumerate(dense)]
        scale = 1.0 if init == "identity" else float(zoom)
        self.affine = layers.Dense(
            6, kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant([scale, 0.0, 0.0, 0.0, scale, 0.0]),
            name="loc_affine", dtype="float32")  # theta in float32 under a mixed model too: it places the sampling grid

    def call(self, u):
        x = u
        for layer in self.convs + [self.flatten] + self.hidden:
            x = layer(x)
        return ops.reshape(self.affine(x), (-1, 2, 3))  # theta: (B, 2, 3)

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class ConvFeatures(layers.Layer):
    """The "convnet" classifier's features: V (B, h, w, C) -> (B, cls_dense) after dropout."""

    def __init__(self, filters=(32, 64), kernel=3, dense=128, dropout=0.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self._args = dict(filters=tuple(filters), kernel=kernel, dense=dense, dropout=dropout, seed=seed)
        self.convs = conv_stack(filters, kernel, seed + 100, "cls")
        self.flatten = layers.Flatten()
        self.hidden = layers.Dense(dense, activation="relu", name="cls_dense",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 150))
        self.dropout = layers.Dropout(dropout, seed=seed + 151)

    def call(self, v, training=False):
        x = v
        for layer in self.convs:
            x = layer(x)
        return self.dropout(self.hidden(self.flatten(x)), training=training)  # (B, cls_dense)

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class STN(VisattModel):
    """ST-CNN.

    Input: raw pixels (B, H, W, C), uint8 0..255 (scaled to [0, 1] inside).
    `call(images, training=False)` returns a dict:

        <the task's heads>  logits (B, K) on a digit task; digit_logits ... on a sequence task
        theta        (B, 2, 3)     the predicted affine transforms
        transformed  (B, h, w, C)  the sampled images, (h, w) = output_size or (H, W)
    """

    config_cls = STNConfig
    mixed_precision = True

    def __init__(self, config: STNConfig | None = None, task=None, **kwargs):
        super().__init__(config, task, **kwargs)
        config = self.config
        seed = config.seed * 1000
        with policy_scope(self.dtype_policy):  # the grid and the sampling stay float32 (`call`)
            self.localisation = LocalisationNetwork(config.loc_filters, config.loc_kernel,
                                                    config.loc_dense, config.init, config.zoom,
                                                    seed=seed, name="localisation")
            if config.classifier == "convnet":
                self.features = [ConvFeatures(config.cls_filters, config.cls_kernel, config.cls_dense,
                                              config.dropout, seed=seed, name="classifier")]
            else:
                backbone = CNNConfig(arch="modern", widths=config.cls_filters, blocks=config.cls_blocks,
                                     pool=config.cls_pool, rnn=config.cls_rnn, dense=config.cls_dense,
                                     dropout=config.dropout, dense_dropout=config.dropout)
                self.features = feature_layers(backbone)
        self.head = TaskHead(self.task, seed=seed + 152, name="head")  # float32

    @classmethod
    def makes_frames(cls, config) -> bool:
        return config is not None and config.cls_pool == "columns"

    @classmethod
    def check_task(cls, task, config=None) -> None:
        check_frames(task, cls.makes_frames(config))

    @classmethod
    def check_input(cls, task, config, image_shape) -> None:
        if cls.makes_frames(config):  # the classifier reads the transformed image
            check_column_frames(task, (config.output_size or image_shape)[1], len(config.cls_filters) - 1)

    def call(self, images, training=False):
        u = ops.cast(images, "float32") / 255.0  # (B, H, W, C) in [0, 1]
        _, in_h, in_w, _ = ops.shape(u)
        out_h, out_w = self.config.output_size or (in_h, in_w)
        theta = self.localisation(u)  # (B, 2, 3)
        y, x = affine_grid(theta, out_h, out_w, in_h, in_w)  # (B, h, w) each, input pixels
        v = bilinear_sample(u, y, x)  # (B, h, w, C)
        return {**self.head(apply_layers(self.features, v, training)), "theta": theta, "transformed": v}
