"""Recurrent Attention Model (RAM): Mnih, Heess, Graves, Kavukcuoglu, "Recurrent Models of Visual
Attention", NIPS 2014 (arXiv:1406.6247).

One class per box of the paper's Fig. 1: the glimpse sensor (`attention.GlimpseSensor`),
`GlimpseNetwork` (f_g; or DRAM's convolutional one, `glimpse_network="conv"`), `CoreNetwork`
(f_h), the location network f_l and the baseline b_t (shared with DRAM in `attention.py`), and
the action network f_a, which is the task's head
(`tasks.TaskHead`: one softmax on single-digit stores, the sequence heads on multi-digit ones).
`RAM` unrolls them for `glimpses` steps and trains with the paper's hybrid loss (Sec. 4): the
task's cross-entropy for the classifier, REINFORCE for the location policy and a squared error
for the baseline, all in one `compute_loss`. The reward R is 1 when the task counts the
prediction right (on a sequence store: every digit and the length).

Time indexing used here (and in the outputs): at step t = 0 .. T-1 the location network reads
the state h_t (h_0 = 0) and draws l_t ~ pi(. | h_t); the baseline b_t reads the same state, so
it never depends on the action it is compared with; the glimpse at l_t gives g_t and the core
updates h_{t+1} = f_h(h_t, g_t). The classifier reads h_T. So every one of the T locations is
used for a glimpse, and l_0 (from the zero state) is a learnt starting point plus noise.

Typical use:

    model = RAM(RAMConfig(glimpses=8, patch_size=12, scales=4, core="rnn"))   # the paper's 100x100 setting
    model.compile(optimizer="adam")
    model.fit(images_uint8, labels, batch_size=128)
    outputs = model(test_images, deterministic=True)                        # glimpses at the policy means

Presets (the paper's settings and ours) are in `registry.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import keras
from keras import layers, ops

from visatt_models.attention import (
    AttentionModel,
    BaselineNetwork,
    ConvGlimpseNetwork,
    GlimpseSensor,
    LocationNetwork,
    check_policy_config,
    reinforce_terms,
    seeded_dense,
)
from visatt_models.base import weighted_mean
from visatt_models.config import check_rates
from visatt_models.tasks import TaskHead


@dataclasses.dataclass(frozen=True)
class RAMConfig:
    """Everything that defines a RAM model; `RAM(config)` builds it.

    `std` is the fixed standard deviation of the Gaussian location policy, in units of
    half the image size (l in [-1, 1]). The paper does not report it. 0.17 is ~8.5 px on a
    100x100 canvas (~2.4 px on 28x28); public re-implementations use 0.05
    (kevinzakka/recurrent-visual-attention, config.py) to 0.22 (Torch rnn's rmva example: its
    `--locatorStd` 0.11 goes into `ReinforceNormal(2 * locatorStd)`, i.e. 0.22 in [-1, 1] units),
    on smaller images. `location_clip` clips the sampled location to
    [-clip, clip] before the glimpse; log pi is that of the unclipped sample.
    """

    glimpses: int = 8  # T
    patch_size: int = 12  # g: side of the finest patch and of every retina output
    scales: int = 4  # S: patches of side g, 2g, ..., 2^(S-1) g
    glimpse_hidden: int = 128  # h_g
    location_hidden: int = 128  # h_l
    glimpse_size: int = 256  # g_t
    # "dense": the paper's f_g (`GlimpseNetwork`). "conv": DRAM's (`attention.ConvGlimpseNetwork`):
    # the S scales stacked as channels through `conv_filters`/`conv_kernels` ('same' padding, no
    # pooling) and a ReLU FC ("what", glimpse_size), times a ReLU FC of l_t ("where");
    # glimpse_hidden and location_hidden are then unused.
    glimpse_network: Literal["dense", "conv"] = "dense"
    conv_filters: tuple[int, ...] = (32, 32, 64)
    conv_kernels: tuple[int, ...] = (5, 3, 3)
    core: Literal["lstm", "rnn"] = "lstm"  # the seed article's LSTM or the paper's ReLU RNN
    core_size: int = 256  # h_t
    std: float = 0.17
    location_clip: float = 1.0
    location_mean: Literal["linear", "tanh"] = "linear"  # tanh: bounded, can come back from the clip
    # > 0: a penalty location_leash * sum over steps of max(|mean| - location_clip, 0)^2 per image
    # that pulls a policy mean gone past the clip back (AttentionModel.hybrid_loss); 0: none.
    location_leash: float = 0.0
    # False: the REINFORCE gradient flows through the location network into the core and the
    # glimpse network, as in the paper. True: it stops at h_t (only f_l learns from it).
    detach_policy_gradient: bool = False
    ce_weight: float = 1.0
    reinforce_weight: float = 1.0
    # Optimizer steps with no REINFORCE term at all (the location policy keeps its initial, near-
    # centre means while cross-entropy trains the rest); 0: from the first step.
    policy_warmup_steps: int = 0
    # A std schedule: linear from `std_start` at step 0 to `std` at step `std_anneal_steps`, then
    # `std` (0 steps: `std` throughout). Counted in optimizer steps, saved with the model.
    std_start: float = 0.0
    std_anneal_steps: int = 0
    baseline_weight: float = 1.0
    # Dropout in training, a regulariser against overfitting a frozen store: on every glimpse
    # vector g_t before the core, and on h_T before the action network (0: none). Masks come from
    # the layers' own seeded generators, saved with the model.
    dropout: float = 0.0
    # > 0: in training, a second rollout glimpses at the policy means (no sampling, as the
    # deterministic evaluation does), and its task loss times this weight joins the loss (the
    # `mean_path_ce` metric), so the classifier also learns the path it is tested on at the means.
    # Twice the compute per step. Its gradient reaches the glimpse, core and action networks, not
    # the location network (the locations are stop-gradient'ed). With `dropout` that rollout is
    # dropped out too (it is a training pass). 0: one sampled rollout.
    mean_path_weight: float = 0.0
    seed: int = 0  # weight initialisation and location sampling

    def __post_init__(self):
        for name in ("conv_filters", "conv_kernels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.core not in ("lstm", "rnn"):
            raise ValueError(f"core must be 'lstm' or 'rnn', got {self.core!r}")
        if self.glimpse_network not in ("dense", "conv"):
            raise ValueError(f"glimpse_network must be 'dense' or 'conv', got {self.glimpse_network!r}")
        if len(self.conv_filters) != len(self.conv_kernels) or min(self.conv_filters + self.conv_kernels, default=1) < 1:
            raise ValueError("conv_filters and conv_kernels must have equal lengths and positive entries")
        for name in ("glimpses", "patch_size", "scales", "glimpse_hidden", "location_hidden",
                     "glimpse_size", "core_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_rates(self, "dropout")
        if not self.mean_path_weight >= 0:
            raise ValueError(f"mean_path_weight must be >= 0, got {self.mean_path_weight}")
        check_policy_config(self)


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
        self.retina = GlimpseSensor(patch_size, scales, name="retina")
        self.fc_glimpse = seeded_dense(glimpse_hidden, seed + 1, "relu", name="fc_glimpse")
        self.fc_location = seeded_dense(location_hidden, seed + 2, "relu", name="fc_location")
        self.fc_g = seeded_dense(glimpse_size, seed + 3, "relu", name="fc_g")
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
            self.fc_h = seeded_dense(units, seed + 5, "relu", name="fc_h")
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
class RAM(AttentionModel):
    """The Recurrent Attention Model, trained with the hybrid loss.

    Input: raw pixels (B, H, W, C), uint8 0..255 (scaled to [0, 1] inside, so a saved model
    takes raw images). `call(images, training=False, deterministic=False)` returns a dict:

        <the task's heads>  from h_T: logits (B, K) on a digit task; digit_logits (B, P, K') ...
        locations  (B, T, 2)         l_t as (y, x) in [-1, 1] (retina convention), clipped
        means      (B, T, 2)         mu_t, the policy means
        log_pi     (B, T)            log pi(l_t | h_t)
        baseline   (B, T)            b_t

    Locations are sampled in training and at inference (the evaluator's Monte-Carlo averaging
    draws several) with the model's own `SeedGenerator`, seeded from the config; its state is
    saved with the model. `deterministic=True` glimpses at the means instead.
    """

    config_cls = RAMConfig

    @classmethod
    def check_task(cls, task, config=None) -> None:
        if getattr(task, "head", None) == "ctc":
            raise ValueError("RAM classifies from its last state, one vector: it has no frames for the ctc head")

    def __init__(self, config: RAMConfig | None = None, task=None, **kwargs):
        super().__init__(config, task, **kwargs)
        config = self.config
        seed = config.seed * 100
        if config.glimpse_network == "conv":
            self.glimpse_network = ConvGlimpseNetwork(
                config.patch_size, config.scales, config.conv_filters, config.conv_kernels,
                config.glimpse_size, seed=seed, name="glimpse_network")
        else:
            self.glimpse_network = GlimpseNetwork(
                config.patch_size, config.scales, config.glimpse_hidden, config.location_hidden,
                config.glimpse_size, seed=seed, name="glimpse_network")
        self.core_network = CoreNetwork(config.core, config.core_size, seed=seed,
                                        name="core_network")
        self.location_network = LocationNetwork(
            config.std, config.location_clip, config.detach_policy_gradient, seed=seed,
            mean=config.location_mean, name="location_network")
        self.action_network = TaskHead(self.task, seed=seed + 8, name="action_network")  # f_a
        self.baseline_network = BaselineNetwork(seed=seed, name="baseline_network")
        self.glimpse_dropout = layers.Dropout(config.dropout, seed=seed + 11, name="glimpse_dropout")
        self.core_dropout = layers.Dropout(config.dropout, seed=seed + 12, name="core_dropout")
        self.mean_path_tracker = keras.metrics.Mean(name="mean_path_ce") if config.mean_path_weight else None

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
        noise = self.location_noise(batch, cfg.glimpses, deterministic)  # (B, T, 2)
        states = self.core_network.initial_state(batch)
        h_t = states[0]  # h_0 = 0: (B, core_size)
        std = self.policy_std()  # None: the fixed std
        locations, means, log_pis, baselines = [], [], [], []
        for t in range(cfg.glimpses):
            l_t, log_pi, mu_t = self.location_network(h_t, noise[:, t], std=std)  # (B, 2), (B,), (B, 2)
            baselines.append(self.baseline_network(h_t))  # b_t: (B,)
            g_t = self.glimpse_dropout(self.glimpse_network(x, l_t), training=training)  # (B, glimpse_size)
            h_t, states = self.core_network(g_t, states)  # h_{t+1}: (B, core_size)
            locations.append(l_t)
            means.append(mu_t)
            log_pis.append(log_pi)
        return {
            **self.action_network(self.core_dropout(h_t, training=training)),  # the task's heads from h_T
            "locations": ops.stack(locations, axis=1),  # (B, T, 2)
            "means": ops.stack(means, axis=1),  # (B, T, 2)
            "log_pi": ops.stack(log_pis, axis=1),  # (B, T)
            "baseline": ops.stack(baselines, axis=1),  # (B, T)
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Hybrid loss (Sec. 4, "Training procedure"), summed with the config's weights:

            ce        = mean_b  task loss (softmax cross-entropy; summed over a sequence's heads)
            reinforce = mean_b  sum_t -log_pi_t * stop_gradient(R - b_t),  R = 1[task counts it right]
            baseline  = mean_bt (b_t - R)^2

        Each term and the task's metrics (accuracy = mean R on a digit task) are tracked.
        With `mean_path_weight` w > 0, training adds w * mean_b task loss of a rollout at the
        policy means (`mean_path_ce`, tracked in evaluation too, where it is not added), from a second
        call on the same images `x`.
        """
        ce, reward = self.task_loss(y, y_pred, sample_weight)  # (B,), (B,)
        log_pi = y_pred["log_pi"]  # (B, T)
        rewards = ops.broadcast_to(reward[:, None], ops.shape(log_pi))  # R credited to every step
        reinforce, baseline_mse = reinforce_terms(log_pi, rewards, y_pred["baseline"])  # (B,), (B,)
        loss = self.hybrid_loss(ce, reinforce, baseline_mse, sample_weight, training, y_pred.get("means"))
        if self.mean_path_tracker is not None:
            if x is None:
                raise ValueError("mean_path_weight > 0 needs the images: call compute_loss(x=images, ...)")
            at_means = self(x, training=training, deterministic=True)
            mean_path_ce = weighted_mean(self.task.loss(y, at_means), sample_weight)
            # In evaluation too, for the log (the trainer validates at the means, where it equals val_ce_loss).
            self.mean_path_tracker.update_state(mean_path_ce)
            if training:
                loss = loss + self.config.mean_path_weight * mean_path_ce
        return loss
