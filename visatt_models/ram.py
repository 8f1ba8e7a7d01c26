"""Recurrent Attention Model (RAM): Mnih, Heess, Graves, Kavukcuoglu, "Recurrent Models of Visual
Attention", NIPS 2014 (arXiv:1406.6247).

One class per box of the paper's Fig. 1: the glimpse sensor (`sampler.Retina`), `GlimpseNetwork`
(f_g), `CoreNetwork` (f_h), `LocationNetwork` (f_l), `ActionNetwork` (f_a) and
`BaselineNetwork` (b_t). `RAM` unrolls them for `glimpses` steps and trains with the paper's
hybrid loss (Sec. 4): cross-entropy for the classifier, REINFORCE for the location policy and a
squared error for the baseline, all in one `compute_loss`.

Time indexing used here (and in the outputs): at step t = 0 .. T-1 the location network reads
the state h_t (h_0 = 0) and draws l_t ~ pi(. | h_t); the baseline b_t reads the same state, so
it never depends on the action it is compared with; the glimpse at l_t gives g_t and the core
updates h_{t+1} = f_h(h_t, g_t). The classifier reads h_T. So every one of the T locations is
used for a glimpse, and l_0 (from the zero state) is a learnt starting point plus noise.

Typical use:

    model = RAM(RAM_PRESETS["paper-100"])
    model.compile(optimizer="adam")
    model.fit(images_uint8, labels, batch_size=128)
    probabilities = model.mc_probabilities(test_images, samples=10)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import keras
import numpy as np
from keras import layers, ops

from visatt_models.sampler import Retina


@dataclasses.dataclass(frozen=True)
class RAMConfig:
    """Everything that defines a RAM model; `RAM(config)` builds it.

    `std` is the fixed standard deviation of the Gaussian location policy, in units of
    half the image size (l in [-1, 1]). The paper does not report it. 0.17 is ~8.5 px on a
    100x100 canvas (~2.4 px on 28x28); public re-implementations use 0.05
    (kevinzakka/recurrent-visual-attention, config.py) to 0.11 (Torch rnn's rmva example,
    `--locatorStd`), on smaller images. `location_clip` clips the sampled location to
    [-clip, clip] before the glimpse; log pi is that of the unclipped sample.
    """

    glimpses: int = 8  # T
    patch_size: int = 12  # g: side of the finest patch and of every retina output
    scales: int = 4  # S: patches of side g, 2g, ..., 2^(S-1) g
    glimpse_hidden: int = 128  # h_g
    location_hidden: int = 128  # h_l
    glimpse_size: int = 256  # g_t
    core: Literal["lstm", "rnn"] = "lstm"  # the seed article's LSTM or the paper's ReLU RNN
    core_size: int = 256  # h_t
    std: float = 0.17
    location_clip: float = 1.0
    # False: the REINFORCE gradient flows through the location network into the core and the
    # glimpse network, as in the paper. True: it stops at h_t (only f_l learns from it).
    detach_policy_gradient: bool = False
    num_classes: int = 10
    ce_weight: float = 1.0
    reinforce_weight: float = 1.0
    baseline_weight: float = 1.0
    seed: int = 0  # weight initialisation and location sampling

    def __post_init__(self):
        if self.core not in ("lstm", "rnn"):
            raise ValueError(f"core must be 'lstm' or 'rnn', got {self.core!r}")
        for name in ("glimpses", "patch_size", "scales", "glimpse_hidden", "location_hidden",
                     "glimpse_size", "core_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")


# Settings of the paper's classification experiments (Sec. 4.1, Tables 1-2; ReLU RNN core).
RAM_PRESETS: dict[str, RAMConfig] = {
    # 28x28 MNIST: 7 glimpses of one 8x8 patch (1.07% error, NIPS version).
    "paper-28": RAMConfig(glimpses=7, patch_size=8, scales=1, core="rnn"),
    # 60x60 translated / cluttered MNIST: 8 glimpses, 3 scales of 12x12 (1.2% / 4.04%).
    "paper-60": RAMConfig(glimpses=8, patch_size=12, scales=3, core="rnn"),
    # 100x100 cluttered MNIST: 8 glimpses, 4 scales of 12x12 (8.11%).
    "paper-100": RAMConfig(glimpses=8, patch_size=12, scales=4, core="rnn"),
    # The seed article's variant of paper-100 with an LSTM core.
    "seed-100": RAMConfig(glimpses=8, patch_size=12, scales=4, core="lstm"),
    # Our training recipe (short experiments on mnist-cluttered-60, see the README): an LSTM core
    # and the policy gradient reaching it at 1/20 weight. At full weight the REINFORCE term,
    # summed over the glimpses and scaled by 1/std, swamps the classifier (chance level); detached,
    # the early glimpses hover around the centre.
    "visatt-60": RAMConfig(glimpses=8, patch_size=12, scales=3, core="lstm", std=0.11, reinforce_weight=0.05),
    "visatt-100": RAMConfig(glimpses=8, patch_size=12, scales=4, core="lstm", std=0.11, reinforce_weight=0.05),
}


def _dense(units, seed, activation=None, use_bias=True, name=None, zero=False):
    """A Dense layer with its own fixed initialiser seed, so a config always gives the same weights."""
    kernel = "zeros" if zero else keras.initializers.GlorotUniform(seed=seed)
    return layers.Dense(units, activation=activation, use_bias=use_bias,
                        kernel_initializer=kernel, name=name)


@keras.saving.register_keras_serializable(package="visatt")
class GlimpseNetwork(layers.Layer):
    """Glimpse network f_g(x, l; theta_g) (Fig. 1B):

        h_g = ReLU(Linear(rho(x, l)))          rho: the retina, (B, S, g, g, C) -> (B, S g g C)
        h_l = ReLU(Linear(l))                  (B, location_hidden)
        g_t = ReLU(Linear(h_g) + Linear(h_l))  (B, glimpse_size)

    The two last Linear maps are one Dense on [h_g, h_l] (the same function, one bias, one
    matmul).

    It owns the retina: `call(x, l_t)` takes the images x (B, H, W, C) in [0, 1] and the
    locations l_t (B, 2), reads one multi-scale glimpse per image (all in one vectorised op)
    and embeds it.
    """

    def __init__(self, patch_size, scales, glimpse_hidden, location_hidden, glimpse_size, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.retina = Retina(patch_size, scales)
        self.fc_glimpse = _dense(glimpse_hidden, seed + 1, "relu", name="fc_glimpse")
        self.fc_location = _dense(location_hidden, seed + 2, "relu", name="fc_location")
        self.fc_g = _dense(glimpse_size, seed + 3, "relu", name="fc_g")
        self._args = dict(patch_size=patch_size, scales=scales, glimpse_hidden=glimpse_hidden,
                          location_hidden=location_hidden, glimpse_size=glimpse_size, seed=seed)

    def build(self, images_shape):
        """`images_shape`: (B, H, W, C) of the model's input."""
        channels = images_shape[-1]
        g, s = self.retina.patch_size, self.retina.num_scales
        self.fc_glimpse.build((None, s * g * g * channels))
        self.fc_location.build((None, 2))
        self.fc_g.build((None, self.fc_glimpse.units + self.fc_location.units))
        self.built = True

    def call(self, x, l_t):
        patches = self.retina(x, l_t)  # (B, S, g, g, C)
        rho = ops.reshape(patches, (-1, math.prod(patches.shape[1:])))  # (B, S * g * g * C)
        h_g = self.fc_glimpse(rho)  # (B, glimpse_hidden)
        h_l = self.fc_location(l_t)  # (B, location_hidden)
        return self.fc_g(ops.concatenate([h_g, h_l], axis=-1))  # g_t: (B, glimpse_size)

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class CoreNetwork(layers.Layer):
    """Core network f_h(h_{t}, g_t; theta_h) -> h_{t+1} (Fig. 1C).

    "rnn": h_{t+1} = ReLU(Linear(h_t) + Linear(g_t)), the paper's classification core (Sec. 4.1),
    computed as one Dense on [g_t, h_t].
    "lstm": an LSTM cell (the seed article); its state is (h, c).
    States are lists of (B, units) tensors; `states[0]` is h.
    """

    def __init__(self, kind, units, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.units = units
        self.seed = seed
        if kind == "lstm":
            self.cell = layers.LSTMCell(
                units,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 5),
                recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 6),
                name="lstm",
            )
        elif kind == "rnn":
            self.fc_h = _dense(units, seed + 5, "relu", name="fc_h")
        else:
            raise ValueError(f"unknown core {kind!r}")

    def build(self, g_shape):
        """`g_shape`: (B, glimpse_size)."""
        if self.kind == "lstm":
            self.cell.build(g_shape)
        else:
            self.fc_h.build((None, g_shape[-1] + self.units))
        self.built = True

    def initial_state(self, batch, dtype="float32"):
        zeros = ops.zeros((batch, self.units), dtype=dtype)  # (B, units)
        return [zeros, zeros] if self.kind == "lstm" else [zeros]

    def call(self, g_t, states):
        if self.kind == "lstm":
            h, states = self.cell(g_t, states)
            return h, list(states)
        h = self.fc_h(ops.concatenate([g_t, states[0]], axis=-1))  # (B, units)
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "units": self.units, "seed": self.seed}


@keras.saving.register_keras_serializable(package="visatt")
class LocationNetwork(layers.Layer):
    """Location network f_l(h_t; theta_l) and the Gaussian policy (Sec. 3.1, Sec. 4.1).

        mu_t  = Linear(h_t)                       (B, 2), linear as in the paper
        l_t   = mu_t + std * eps,  eps ~ N(0, I)   (B, 2), a constant for autodiff
        log_pi = log N(l_t; mu_t, std^2 I)         (B,)

    The sample is stop-gradient'ed: the classifier's loss cannot reach theta_l through l_t, only
    REINFORCE (through log_pi) trains this network. `detach=True` also stops that gradient at
    h_t. The returned location is clipped to [-clip, clip]; log_pi is of the unclipped sample.
    """

    def __init__(self, std, clip=1.0, detach=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.std = std
        self.clip = clip
        self.detach = detach
        self.seed = seed
        self.fc = _dense(2, seed + 7, name="fc_mean")

    def build(self, h_shape):
        self.fc.build(h_shape)
        self.built = True

    def call(self, h_t, noise):
        """`h_t` (B, core_size), `noise` (B, 2) standard normal -> l_t (B, 2), log_pi (B,), mu_t (B, 2)."""
        if self.detach:
            h_t = ops.stop_gradient(h_t)
        mu = self.fc(h_t)  # (B, 2)
        sample = ops.stop_gradient(mu + self.std * noise)  # (B, 2)
        z = (sample - mu) / self.std
        log_pi = ops.sum(-0.5 * z * z - math.log(self.std) - 0.5 * math.log(2 * math.pi), axis=-1)
        l_t = ops.clip(sample, -self.clip, self.clip)
        return l_t, log_pi, mu

    def get_config(self):
        return {**super().get_config(), "std": self.std, "clip": self.clip,
                "detach": self.detach, "seed": self.seed}


@keras.saving.register_keras_serializable(package="visatt")
class ActionNetwork(layers.Layer):
    """Action (classification) network f_a(h_T; theta_a): logits (B, num_classes), softmax in the loss."""

    def __init__(self, num_classes, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.seed = seed
        self.fc = _dense(num_classes, seed + 8, name="fc_logits")

    def build(self, h_shape):
        self.fc.build(h_shape)
        self.built = True

    def call(self, h_t):
        return self.fc(h_t)  # (B, num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "seed": self.seed}


@keras.saving.register_keras_serializable(package="visatt")
class BaselineNetwork(layers.Layer):
    """Baseline b_t = Linear(h_t) (Sec. 4.1, "variance reduction"): predicts the reward R.

    It reads a stop-gradient'ed h_t, so regressing the reward does not shape the core's state.
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.fc = _dense(1, seed + 9, name="fc_baseline")

    def build(self, h_shape):
        self.fc.build(h_shape)
        self.built = True

    def call(self, h_t):
        return self.fc(ops.stop_gradient(h_t))[:, 0]  # (B,)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="visatt")
class RAM(keras.Model):
    """The Recurrent Attention Model for classification, trained with the hybrid loss.

    Input: raw pixels (B, H, W, C), uint8 0..255 (scaled to [0, 1] inside, so a saved model
    takes raw images). `call(images, training=False, deterministic=False)` returns a dict:

        logits     (B, num_classes)  from h_T
        locations  (B, T, 2)         l_t as (y, x) in [-1, 1] (retina convention), clipped
        means      (B, T, 2)         mu_t, the policy means
        log_pi     (B, T)            log pi(l_t | h_t)
        baseline   (B, T)            b_t

    Locations are sampled in training and at inference (that is what `mc_probabilities`
    averages over) with the model's own `SeedGenerator`, seeded from the config; its state is
    saved with the model. `deterministic=True` glimpses at the means instead.
    """

    def __init__(self, config: RAMConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        config = config or RAMConfig()
        self.config = config
        seed = config.seed * 100
        self.glimpse_network = GlimpseNetwork(
            config.patch_size, config.scales, config.glimpse_hidden, config.location_hidden,
            config.glimpse_size, seed=seed, name="glimpse_network")
        self.core_network = CoreNetwork(config.core, config.core_size, seed=seed,
                                        name="core_network")
        self.location_network = LocationNetwork(
            config.std, config.location_clip, config.detach_policy_gradient, seed=seed,
            name="location_network")
        self.action_network = ActionNetwork(config.num_classes, seed=seed, name="action_network")
        self.baseline_network = BaselineNetwork(seed=seed, name="baseline_network")
        self.seed_generator = keras.random.SeedGenerator(config.seed)
        self.ce_tracker = keras.metrics.Mean(name="ce_loss")
        self.reinforce_tracker = keras.metrics.Mean(name="reinforce_loss")
        self.baseline_tracker = keras.metrics.Mean(name="baseline_loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    def build(self, images_shape):
        """`images_shape`: (B, H, W, C)."""
        cfg = self.config
        self.glimpse_network.build(images_shape)
        self.core_network.build((None, cfg.glimpse_size))
        self.location_network.build((None, cfg.core_size))
        self.action_network.build((None, cfg.core_size))
        self.baseline_network.build((None, cfg.core_size))
        self.built = True

    def call(self, images, training=False, deterministic=False):
        cfg = self.config
        x = ops.cast(images, "float32") / 255.0  # (B, H, W, C) in [0, 1]
        batch = ops.shape(x)[0]
        if deterministic:
            noise = ops.zeros((batch, cfg.glimpses, 2))
        else:
            noise = keras.random.normal((batch, cfg.glimpses, 2), seed=self.seed_generator)
        states = self.core_network.initial_state(batch)
        h_t = states[0]  # h_0 = 0: (B, core_size)
        locations, means, log_pis, baselines = [], [], [], []
        for t in range(cfg.glimpses):
            l_t, log_pi, mu_t = self.location_network(h_t, noise[:, t])  # (B, 2), (B,), (B, 2)
            baselines.append(self.baseline_network(h_t))  # b_t: (B,)
            g_t = self.glimpse_network(x, l_t)  # (B, glimpse_size)
            h_t, states = self.core_network(g_t, states)  # h_{t+1}: (B, core_size)
            locations.append(l_t)
            means.append(mu_t)
            log_pis.append(log_pi)
        return {
            "logits": self.action_network(h_t),  # (B, num_classes)
            "locations": ops.stack(locations, axis=1),  # (B, T, 2)
            "means": ops.stack(means, axis=1),  # (B, T, 2)
            "log_pi": ops.stack(log_pis, axis=1),  # (B, T)
            "baseline": ops.stack(baselines, axis=1),  # (B, T)
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Hybrid loss (Sec. 4, "Training procedure"), summed with the config's weights:

            ce        = mean_b  -log softmax(logits)[y]
            reinforce = mean_b  sum_t -log_pi_t * stop_gradient(R - b_t),  R = 1[argmax = y]
            baseline  = mean_bt (b_t - R)^2

        Each term, and the accuracy (= mean R), is tracked as a metric.
        """
        y = ops.cast(ops.reshape(y, (-1,)), "int32")  # (B,)
        logits = y_pred["logits"]
        log_pi = y_pred["log_pi"]  # (B, T)
        baseline = y_pred["baseline"]  # (B, T)
        reward = ops.cast(ops.argmax(logits, axis=-1) == y, "float32")  # R: (B,)
        advantage = ops.stop_gradient(reward[:, None] - baseline)  # (B, T)

        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # (B,)
        reinforce = ops.sum(-log_pi * advantage, axis=1)  # (B,)
        baseline_mse = ops.mean(ops.square(baseline - reward[:, None]), axis=1)  # (B,)

        ce, reinforce, baseline_mse, accuracy = (
            _weighted_mean(v, sample_weight) for v in (ce, reinforce, baseline_mse, reward)
        )
        self.ce_tracker.update_state(ce)
        self.reinforce_tracker.update_state(reinforce)
        self.baseline_tracker.update_state(baseline_mse)
        self.accuracy_tracker.update_state(accuracy)
        cfg = self.config
        total = (cfg.ce_weight * ce + cfg.reinforce_weight * reinforce
                 + cfg.baseline_weight * baseline_mse)
        return total + ops.sum(self.losses) if self.losses else total

    def mc_probabilities(self, images, samples=10, batch_size=None):
        """Monte-Carlo class probabilities: the softmax averaged over `samples` location draws.

        The batch is tiled `samples` times and run through the compiled predict function
        (`predict_on_batch`), so the M draws of a batch are one vectorised pass.

        Args:
            images: (B, H, W, C) raw uint8.
            samples: M, location samples per image (M = 1 is a single stochastic pass).
            batch_size: images per pass (each pass holds batch_size * M copies); None = all.

        Returns:
            (B, num_classes) numpy array of averaged probabilities.
        """
        images = np.asarray(images)
        step = len(images) if batch_size is None else batch_size
        chunks = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            tiled = np.tile(chunk, (samples, 1, 1, 1))  # (M * n, H, W, C), sample-major
            logits = np.asarray(self.predict_on_batch(tiled)["logits"], np.float64)
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)  # (M * n, K)
            chunks.append(probs.reshape(samples, len(chunk), -1).mean(axis=0))  # (n, K)
        return np.concatenate(chunks, axis=0).astype(np.float32)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(RAMConfig(**config.pop("config")), **config)

    # The seed generator's state is not a weight, so Keras would not save it; keep it so that a
    # reloaded model draws the same locations as the original would have.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["seed_generator_state"] = self.seed_generator.state

    def load_own_variables(self, store):
        if "seed_generator_state" in store.keys():
            state = np.asarray(store["seed_generator_state"])
            self.seed_generator.state.assign(ops.cast(state, self.seed_generator.state.dtype))


def _weighted_mean(values, sample_weight):
    """Mean over the batch, weighted by `sample_weight` (B,) when given."""
    if sample_weight is None:
        return ops.mean(values)
    w = ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    return ops.sum(values * w) / ops.maximum(ops.sum(w), 1e-12)
