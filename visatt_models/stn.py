"""Spatial Transformer Network (ST-CNN): Jaderberg, Simonyan, Zisserman, Kavukcuoglu, "Spatial
Transformer Networks", NIPS 2015 (arXiv:1506.02025).

    x (B, H, W, C) -> LocalisationNetwork -> theta (B, 2, 3)          (Sec. 3.1)
                   -> affine_grid(theta)   -> sampling grid            (Sec. 3.2, eq. 1)
                   -> bilinear_sample      -> V (B, h, w, C)           (Sec. 3.3, eq. 5)
                   -> Classifier (CNN)     -> logits (B, num_classes)

Everything is differentiable, so the localisation network learns from the classification loss
alone. The last localisation layer starts with zero weights and a bias equal to the identity
transform (or a centred zoom), as in the paper's experiments.

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

from visatt_models.sampler import affine_grid, bilinear_sample


@dataclasses.dataclass(frozen=True)
class STNConfig:
    """STN hyper-parameters (defaults: a small ST-CNN for single digits on canvases).

    loc_filters, loc_kernel: localisation convs (each ReLU + 2x2 max-pool); loc_dense: its
        hidden dense layers (ReLU) before the 6 affine outputs.
    init: "identity" (theta = I) or "zoom" (theta = diag(zoom, zoom): the output shows the
        central `zoom` fraction of the image, magnified).
    output_size: (h, w) of the transformed image; None = the input size.
    cls_filters, cls_kernel: classifier convs (each ReLU + 2x2 max-pool); cls_dense: its hidden
        dense width; dropout before the logits.
    """

    loc_filters: tuple[int, ...] = (20, 20)
    loc_kernel: int = 5
    loc_dense: tuple[int, ...] = (50,)
    init: Literal["identity", "zoom"] = "identity"
    zoom: float = 0.5
    output_size: tuple[int, int] | None = None
    cls_filters: tuple[int, ...] = (32, 64)
    cls_kernel: int = 3
    cls_dense: int = 128
    dropout: float = 0.0
    num_classes: int = 10
    seed: int = 0

    def __post_init__(self):
        # Tuples even after a JSON round trip (get_config / from_config gives lists).
        for name in ("loc_filters", "loc_dense", "cls_filters"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.output_size is not None:
            object.__setattr__(self, "output_size", tuple(int(v) for v in self.output_size))
            if len(self.output_size) != 2 or min(self.output_size) < 1:
                raise ValueError(f"output_size must be (h, w) >= 1, got {self.output_size}")
        if self.init not in ("identity", "zoom"):
            raise ValueError(f"init must be 'identity' or 'zoom', got {self.init!r}")
        if not self.zoom > 0:
            raise ValueError(f"zoom must be > 0, got {self.zoom}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


STN_PRESETS: dict[str, STNConfig] = {
    # Starts from the identity and keeps the input size.
    "identity": STNConfig(),
    # For 100x100 canvases: starts looking at the central 50x50 pixels at full resolution
    # (zoom 0.5 onto a 50x50 output), so the classifier works on a digit-sized window.
    "zoom-100": STNConfig(init="zoom", zoom=0.5, output_size=(50, 50)),
}


def _conv_stack(filters, kernel, seed, prefix):
    """conv (ReLU, 'same') + 2x2 max-pool per entry of `filters`."""
    stack = []
    for i, f in enumerate(filters):
        stack.append(layers.Conv2D(f, kernel, padding="same", activation="relu",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
                                   name=f"{prefix}_conv{i}"))
        stack.append(layers.MaxPooling2D(2, name=f"{prefix}_pool{i}"))
    return stack


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
        self.convs = _conv_stack(filters, kernel, seed, "loc")
        self.flatten = layers.Flatten()
        self.hidden = [layers.Dense(d, activation="relu", name=f"loc_dense{i}",
                                    kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 50 + i))
                       for i, d in enumerate(dense)]
        scale = 1.0 if init == "identity" else float(zoom)
        self.affine = layers.Dense(
            6, kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant([scale, 0.0, 0.0, 0.0, scale, 0.0]),
            name="loc_affine")

    def call(self, u):
        x = u
        for layer in self.convs + [self.flatten] + self.hidden:
            x = layer(x)
        return ops.reshape(self.affine(x), (-1, 2, 3))  # theta: (B, 2, 3)

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class Classifier(layers.Layer):
    """CNN on the transformed image V (B, h, w, C) -> logits (B, num_classes)."""

    def __init__(self, filters=(32, 64), kernel=3, dense=128, dropout=0.0, num_classes=10, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self._args = dict(filters=tuple(filters), kernel=kernel, dense=dense, dropout=dropout,
                          num_classes=num_classes, seed=seed)
        self.convs = _conv_stack(filters, kernel, seed + 100, "cls")
        self.flatten = layers.Flatten()
        self.hidden = layers.Dense(dense, activation="relu", name="cls_dense",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 150))
        self.dropout = layers.Dropout(dropout, seed=seed + 151)
        self.logits = layers.Dense(num_classes, name="cls_logits",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 152))

    def call(self, v, training=False):
        x = v
        for layer in self.convs:
            x = layer(x)
        x = self.hidden(self.flatten(x))
        return self.logits(self.dropout(x, training=training))  # (B, num_classes)

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class STN(keras.Model):
    """ST-CNN classifier.

    Input: raw pixels (B, H, W, C), uint8 0..255 (scaled to [0, 1] inside).
    `call(images, training=False)` returns a dict:

        logits       (B, num_classes)
        theta        (B, 2, 3)     the predicted affine transforms
        transformed  (B, h, w, C)  the sampled images, (h, w) = output_size or (H, W)
    """

    def __init__(self, config: STNConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        config = config or STNConfig()
        self.config = config
        seed = config.seed * 1000
        self.localisation = LocalisationNetwork(config.loc_filters, config.loc_kernel,
                                                config.loc_dense, config.init, config.zoom,
                                                seed=seed, name="localisation")
        self.classifier = Classifier(config.cls_filters, config.cls_kernel, config.cls_dense,
                                     config.dropout, config.num_classes, seed=seed,
                                     name="classifier")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    def call(self, images, training=False):
        u = ops.cast(images, "float32") / 255.0  # (B, H, W, C) in [0, 1]
        _, in_h, in_w, _ = ops.shape(u)
        out_h, out_w = self.config.output_size or (in_h, in_w)
        theta = self.localisation(u)  # (B, 2, 3)
        y, x = affine_grid(theta, out_h, out_w, in_h, in_w)  # (B, h, w) each, input pixels
        v = bilinear_sample(u, y, x)  # (B, h, w, C)
        return {"logits": self.classifier(v, training=training), "theta": theta, "transformed": v}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Softmax cross-entropy on the logits; tracks `accuracy`."""
        y = ops.cast(ops.reshape(y, (-1,)), "int32")  # (B,)
        logits = y_pred["logits"]
        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # (B,)
        correct = ops.cast(ops.argmax(logits, axis=-1) == y, "float32")  # (B,)
        if sample_weight is None:
            loss, accuracy = ops.mean(ce), ops.mean(correct)
        else:
            w = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            total = ops.maximum(ops.sum(w), 1e-12)
            loss, accuracy = ops.sum(ce * w) / total, ops.sum(correct * w) / total
        self.accuracy_tracker.update_state(accuracy)
        return loss + ops.sum(self.losses) if self.losses else loss

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(STNConfig(**config.pop("config")), **config)
