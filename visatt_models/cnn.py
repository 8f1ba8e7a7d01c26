"""CNN baselines for single-digit canvases: the seed's Keras `mnist_cnn` and a modern residual net.

`arch="seed"` is the classic Keras MNIST example the seed article used as its baseline:
conv32 3x3 ReLU, conv64 3x3 ReLU, max-pool 2, dropout 0.25, dense 128 ReLU, dropout 0.5,
softmax (here: logits; the softmax lives in the loss). On a 100x100 canvas its flatten layer
feeds 48*48*64 features into the dense layer (~19M parameters) and it has no way to find a
small digit among clutter other than memorising positions.

`arch="modern"` is what one would pick today for cluttered canvases: a small ResNet
(He et al. 2016) of conv-BN-ReLU basic blocks, each stage halving the resolution, ending in
global average pooling, so the classifier is translation invariant and the receptive field
(~90 px with four stages) covers the canvas. ~1.2M parameters with the default widths.

Both take raw uint8 images (B, H, W, C), scale them to [0, 1] inside and return
`{"logits": (B, num_classes)}`. The loss (softmax cross-entropy) is computed once, in
`compute_loss`, which also tracks the `accuracy` metric.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
from keras import layers, ops

_PACKAGE = "visatt"
DEFAULT_WIDTHS = {"seed": (32, 64), "modern": (32, 64, 128, 256)}
# Keras' default 0.99 keeps 0.99^n of the initial variance 1 after n steps (1.5% after 420):
# next to the tiny activation variances of sparse canvases that wrecks inference for the first
# thousands of steps. 0.9 (PyTorch's default) forgets the initial value within ~50 steps.
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """CNN hyper-parameters.

    arch: "seed" (Keras mnist_cnn) or "modern" (residual net with global average pooling).
    widths: seed: the two conv widths; modern: stem width then one entry per stage (each stage
        halves the resolution). Empty means the arch's default (`DEFAULT_WIDTHS`).
    dense: seed only: width of the hidden dense layer.
    dropout: seed: dropout after the conv block (0.25); modern: dropout before the classifier.
    dense_dropout: seed only: dropout after the hidden dense layer (0.5).
    blocks: modern only: basic blocks per stage.
    num_classes: output classes (the store's `num_classes`).
    """

    arch: Literal["seed", "modern"] = "seed"
    widths: tuple[int, ...] = ()
    dense: int = 128
    dropout: float = 0.25
    dense_dropout: float = 0.5
    blocks: int = 1
    num_classes: int = 10

    def __post_init__(self):
        if self.arch not in DEFAULT_WIDTHS:
            raise ValueError(f"arch must be one of {sorted(DEFAULT_WIDTHS)}, got {self.arch!r}")
        if not self.widths:  # resolve here so the saved config names the real widths
            object.__setattr__(self, "widths", DEFAULT_WIDTHS[self.arch])
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.arch == "seed" and len(self.widths) != 2:
            raise ValueError(f"the seed CNN has exactly 2 conv widths, got {self.widths}")
        if self.arch == "modern" and len(self.widths) < 2:
            raise ValueError(f"the modern CNN needs a stem width and at least one stage, got {self.widths}")
        if any(w < 1 for w in self.widths) or self.dense < 1 or self.blocks < 1 or self.num_classes < 2:
            raise ValueError("widths, dense and blocks must be positive and num_classes at least 2")
        for name in ("dropout", "dense_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


CNN_PRESETS = {
    "seed": CNNConfig(arch="seed"),
    "modern": CNNConfig(arch="modern"),
    "modern-small": CNNConfig(arch="modern", widths=(16, 32, 64, 128)),
}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBN(layers.Layer):
    """conv k x k (no bias) -> batch norm -> ReLU (unless relu=False)."""

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1, relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.relu = filters, kernel_size, strides, relu
        self.conv = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)
        self.bn = layers.BatchNormalization(momentum=BN_MOMENTUM)

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
        self.conv1 = ConvBN(filters, 3, strides)
        self.conv2 = layers.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn2 = layers.BatchNormalization(momentum=BN_MOMENTUM, gamma_initializer="zeros")  # block starts as identity
        self.pool = None
        self.project = None

    def build(self, input_shape):
        if self.strides != 1:
            self.pool = layers.AveragePooling2D(self.strides, padding="same")
        if self.strides != 1 or input_shape[-1] != self.filters:
            self.project = ConvBN(self.filters, 1, relu=False)

    def call(self, x, training=False):
        y = self.bn2(self.conv2(self.conv1(x, training=training)), training=training)
        shortcut = x if self.pool is None else self.pool(x)
        if self.project is not None:
            shortcut = self.project(shortcut, training=training)
        return ops.relu(y + shortcut)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CNN(keras.Model):
    """CNN classifier of uint8 images (B, H, W, C) -> {"logits": (B, num_classes)}."""

    def __init__(self, config: CNNConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config if config is not None else CNNConfig()
        c = self.config
        if c.arch == "seed":
            self.features = [
                layers.Conv2D(c.widths[0], 3, activation="relu"),
                layers.Conv2D(c.widths[1], 3, activation="relu"),
                layers.MaxPooling2D(2),
                layers.Dropout(c.dropout),
                layers.Flatten(),
                layers.Dense(c.dense, activation="relu"),
                layers.Dropout(c.dense_dropout),
            ]
        else:
            self.features = [ConvBN(c.widths[0])]  # stem at full resolution
            for width in c.widths[1:]:
                self.features.append(BasicBlock(width, strides=2))
                self.features.extend(BasicBlock(width) for _ in range(c.blocks - 1))
            self.features.extend([layers.GlobalAveragePooling2D(), layers.Dropout(c.dropout)])
        self.classifier = layers.Dense(c.num_classes)
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, images, training=False):
        x = ops.cast(images, "float32") / 255.0  # (B, H, W, C) in [0, 1]
        for layer in self.features:
            # Explicit: Keras' call context does not reach sublayers when a trainer runs
            # `call` directly (JAX's stateless train step does): dropout and batch norm would
            # silently stay in inference mode.
            x = layer(x, training=training)
        return {"logits": self.classifier(x)}  # (B, num_classes)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Softmax cross-entropy of the logits against integer labels y (B,); tracks accuracy."""
        logits = y_pred["logits"]
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # (B,)
        self.accuracy.update_state(y, logits, sample_weight=sample_weight)
        if sample_weight is not None:
            return ops.sum(loss * sample_weight) / ops.maximum(ops.sum(sample_weight), 1e-12)
        return ops.mean(loss)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(CNNConfig(**config.pop("config")), **config)
