"""What the recurrent attention models share: RAM (Mnih et al. 2014) and DRAM (Ba et al. 2015).

- `GlimpseSensor`: the retina rho(x, l) as a layer, (B, H, W, C), (B, 2) -> (B, S, g, g, C)
  (multi-resolution patches, `sampler.Retina`: all glimpses of a batch in two matmuls).
- `ConvGlimpseNetwork`: DRAM's glimpse network (also RAM's with `glimpse_network="conv"`): the
  retina's scales as channels through convs, "what" times "where".
- `LocationNetwork`: the Gaussian location policy (RAM's f_l, DRAM's emission network):
  a linear mean from a hidden state, fixed std, a sample, log pi.
- `BaselineNetwork`: b_t, a linear prediction of the reward from a (stop-gradient'ed) state.
- `reinforce_terms`: the REINFORCE term -log pi * stop_gradient(R - b) and the baseline's
  squared error, with an optional mask over steps (DRAM truncates after the first wrong digit).
- `AttentionModel`: a `VisattModel` that samples locations from its own `SeedGenerator`
  (saved with the model) and so is evaluated with Monte-Carlo averaging.

Location convention (the retina's): l = (l_y, l_x) in [-1, 1]^2, (0, 0) the image centre,
(-1, -1) the outer corner of the top-left pixel.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from visatt_models.base import VisattModel, weighted_mean
from visatt_models.cnn import conv_stack
from visatt_models.sampler import Retina


def seeded_dense(units, seed, activation=None, name=None, use_bias=True):
    """A Dense layer with its own fixed Glorot-uniform seed, so a config always gives the same weights."""
    return layers.Dense(units, activation=activation, use_bias=use_bias,
                        kernel_initializer=keras.initializers.GlorotUniform(seed=seed), name=name)


@keras.saving.register_keras_serializable(package="visatt")
class GlimpseSensor(layers.Layer):
    """The glimpse sensor rho(x, l): `num_scales` concentric patches of side g, 2g, 4g, ...,
    each area-averaged to g x g. (B, H, W, C) float, (B, 2) -> (B, S, g, g, C); zero outside."""

    def __init__(self, patch_size, num_scales, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.num_scales = patch_size, num_scales
        self.retina = Retina(patch_size, num_scales)
        # No weights, so nothing to build: built from the start. Otherwise a loaded model counts
        # it unbuilt, and Keras' fit takes a batch from the data to build it symbolically, which
        # an endless prefetching `Batches` does not give back: a resumed run (JAX) skipped the
        # first batch of its first epoch.
        self.built = True

    def call(self, x, l_t):
        return self.retina(x, l_t)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "num_scales": self.num_scales}


@keras.saving.register_keras_serializable(package="visatt")
class ConvGlimpseNetwork(layers.Layer):
    """DRAM's glimpse network (Sec. 3.1): the retina's S patches stacked as channels
    (B, g, g, S C) through the convs and a ReLU FC ("what"), times a ReLU FC of the location
    ("where"): g_t = what * where, (B, glimpse_size).

    "where" starts with biases of 1, i.e. as a pass-through (where = ReLU(W l + 1) ~ 1 near the
    centre): with zero biases the product is ~0 for locations near (0, 0), where every glimpse
    path starts, and the first run learnt nothing in an epoch (digits at chance)."""

    def __init__(self, patch_size, scales, filters, kernels, units, seed=0, **kwargs):
        super().__init__(**kwargs)
        self._args = dict(patch_size=patch_size, scales=scales, filters=tuple(filters), kernels=tuple(kernels),
                          units=units, seed=seed)
        self.retina = GlimpseSensor(patch_size, scales, name="retina")
        self.convs = conv_stack(filters, kernels, seed + 20, "glimpse", pool=False)
        self.flatten = layers.Flatten()
        self.fc_what = seeded_dense(units, seed + 30, "relu", name="fc_what")
        self.fc_where = layers.Dense(units, activation="relu", name="fc_where", bias_initializer="ones",
                                     kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 31))

    def build(self, images_shape):
        """`images_shape`: (B, H, W, C) of the model's input."""
        g, s = self.retina.patch_size, self.retina.num_scales
        shape = (None, g, g, s * images_shape[-1])
        for conv in self.convs:  # 'same' padding, no pooling: g x g throughout
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.fc_what.build((None, g * g * shape[-1]))
        self.fc_where.build((None, 2))
        self.built = True

    def call(self, x, l_t):
        patches = self.retina(x, l_t)  # (B, S, g, g, C)
        s, g, c = patches.shape[1], patches.shape[2], patches.shape[4]
        h = ops.reshape(ops.transpose(patches, (0, 2, 3, 1, 4)), (-1, g, g, s * c))  # (B, g, g, S C)
        for conv in self.convs:
            h = conv(h)
        return self.fc_what(self.flatten(h)) * self.fc_where(l_t)  # g_t: (B, units)

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class LocationNetwork(layers.Layer):
    """Location network f_l(h; theta_l) and its Gaussian policy (RAM Sec. 3.1, 4.1; DRAM's
    emission network):

        mu_t  = Linear(h_t)                       (B, 2), linear as in the papers,
                or tanh(Linear(h_t))              (`mean="tanh"`: bounded, as the Torch reference's
                                                  HardTanh and kevinzakka's tanh)
        l_t   = mu_t + std * eps,  eps ~ N(0, I)   (B, 2), a constant for autodiff
        log_pi = log N(l_t; mu_t, std^2 I)         (B,)

    The sample is stop-gradient'ed: a classification loss cannot reach theta_l through l_t, only
    REINFORCE (through log_pi) trains this network. `detach=True` also stops that gradient at
    h_t. The returned location is clipped to [-clip, clip]; log_pi is that of the unclipped sample.
    A linear mean pushed past the clip gets no gradient back from the glimpses it no longer
    changes; a tanh mean stays inside (-1, 1), so the policy can always come back.
    """

    def __init__(self, std, clip=1.0, detach=False, seed=0, mean="linear", **kwargs):
        super().__init__(**kwargs)
        if mean not in ("linear", "tanh"):
            raise ValueError(f"the location mean is 'linear' or 'tanh', not {mean!r}")
        self.mean = mean
        self.std = std
        self.clip = clip
        self.detach = detach
        self.seed = seed
        self.fc = seeded_dense(2, seed + 7, name="fc_mean")

    def build(self, h_shape):
        self.fc.build(h_shape)
        self.built = True

    def call(self, h_t, noise, action=None, std=None):
        """`h_t` (B, units), `noise` (B, 2) standard normal -> l_t (B, 2), log_pi (B,), mu_t (B, 2).

        `action` (B, 2): take this location instead of a sample (log_pi is its density).
        `std`: a scalar tensor to use instead of the fixed `self.std` (a std schedule)."""
        if self.detach:
            h_t = ops.stop_gradient(h_t)
        mu = self.fc(h_t)  # (B, 2)
        if self.mean == "tanh":
            mu = ops.tanh(mu)
        if std is None:
            std, log_std = self.std, math.log(self.std)
        else:
            std = ops.cast(std, mu.dtype)
            log_std = ops.log(std)
        sample = ops.stop_gradient(mu + std * noise if action is None else ops.cast(action, mu.dtype))  # (B, 2)
        z = (sample - mu) / std
        log_pi = ops.sum(-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi), axis=-1)
        l_t = ops.clip(sample, -self.clip, self.clip)
        return l_t, log_pi, mu

    def get_config(self):
        return {**super().get_config(), "std": self.std, "clip": self.clip,
                "detach": self.detach, "seed": self.seed, "mean": self.mean}


@keras.saving.register_keras_serializable(package="visatt")
class BaselineNetwork(layers.Layer):
    """Baseline b_t = Linear(h_t) (RAM Sec. 4.1, "variance reduction"): predicts the reward.

    It reads a stop-gradient'ed h_t, so regressing the reward does not shape the state it reads.
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.fc = seeded_dense(1, seed + 9, name="fc_baseline")

    def build(self, h_shape):
        self.fc.build(h_shape)
        self.built = True

    def call(self, h_t):
        return self.fc(ops.stop_gradient(h_t))[:, 0]  # (B,)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def check_policy_config(config) -> None:
    """Validate the location-policy fields that RAMConfig and DRAMConfig share (std, its schedule,
    the mean's form, the policy warm-up); raise ValueError naming the field."""
    if not config.std > 0:
        raise ValueError(f"std must be > 0, got {config.std}")
    if config.location_mean not in ("linear", "tanh"):
        raise ValueError(f"location_mean must be 'linear' or 'tanh', got {config.location_mean!r}")
    if config.policy_warmup_steps < 0:
        raise ValueError(f"policy_warmup_steps must be >= 0, got {config.policy_warmup_steps}")
    if config.std_anneal_steps < 0:
        raise ValueError(f"std_anneal_steps must be >= 0, got {config.std_anneal_steps}")
    if config.std_start and not config.std_anneal_steps:
        raise ValueError(f"std_start={config.std_start} needs std_anneal_steps > 0 (the steps to reach std over)")
    if not config.location_leash >= 0:
        raise ValueError(f"location_leash must be >= 0, got {config.location_leash}")
    if config.location_leash and config.location_mean == "tanh" and config.location_clip >= 1:
        raise ValueError("location_leash acts on means beyond location_clip, which a tanh mean never reaches "
                         f"with location_clip={config.location_clip}: use it with location_mean='linear'")
    if config.std_anneal_steps and not config.std_start > 0:
        raise ValueError(f"std_anneal_steps={config.std_anneal_steps} needs std_start > 0 (the std at step 0), "
                         f"got {config.std_start}")


def reinforce_terms(log_pi, reward, baseline, mask=None):
    """REINFORCE with a learnt baseline (Williams 1992; RAM Sec. 3.2 and 4.1), per sample.

    Args:
        log_pi: (B, T) log-densities of the sampled locations.
        reward: (B, T) the return credited to each step's action (RAM: R broadcast over steps).
        baseline: (B, T) b_t.
        mask: (B, T) 1 for the steps whose actions are credited, 0 for the rest (None: all).

    Returns:
        reinforce (B,) = sum_t -log_pi_t * stop_gradient(R_t - b_t) * m_t,
        baseline_mse (B,) = mean over the credited steps of (b_t - R_t)^2.
    """
    reward = ops.stop_gradient(ops.cast(reward, log_pi.dtype))
    advantage = ops.stop_gradient(reward - baseline)  # (B, T)
    m = ops.ones_like(log_pi) if mask is None else ops.cast(mask, log_pi.dtype)
    reinforce = ops.sum(-log_pi * advantage * m, axis=1)  # (B,)
    if mask is None:
        return reinforce, ops.mean(ops.square(baseline - reward), axis=1)
    mse = ops.sum(ops.square(baseline - reward) * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)
    return reinforce, mse


class AttentionModel(VisattModel):
    """A model that samples glimpse locations: its own `SeedGenerator` (seeded from the config's
    `seed`, saved with the model) draws the policy noise; `deterministic=True` glimpses at the
    policy means instead. The evaluator adds Monte-Carlo averaging over location samples and a
    deterministic pass.

    `sampling` is a non-trainable scalar (1) that scales the noise: the evaluator sets it to 0
    for its deterministic pass through the compiled predict function (a variable is read at run
    time, so nothing is retraced), and back to 1.
    """

    stochastic = True

    def __init__(self, config=None, task=None, **kwargs):
        super().__init__(config, task, **kwargs)
        self.seed_generator = keras.random.SeedGenerator(self.config.seed)
        self.sampling = self.add_weight(shape=(), initializer="ones", trainable=False, name="sampling")
        # Training steps seen, for `policy_warmup_steps` and the std schedule (saved with the model,
        # so a resumed run continues the count; only models that use it have it, so older
        # checkpoints still load).
        counts = getattr(self.config, "policy_warmup_steps", 0) or getattr(self.config, "std_anneal_steps", 0)
        self.policy_steps = (self.add_weight(shape=(), initializer="zeros", trainable=False, name="policy_steps",
                                             dtype="int32") if counts else None)
        self.ce_tracker = keras.metrics.Mean(name="ce_loss")
        self.reinforce_tracker = keras.metrics.Mean(name="reinforce_loss")
        self.baseline_tracker = keras.metrics.Mean(name="baseline_loss")
        # The share of the policy means' coordinates beyond the clip (a policy that has run into
        # the image border glimpses there whatever its state says), and the leash's penalty.
        self.outside_tracker = keras.metrics.Mean(name="means_outside")
        self.leash_tracker = keras.metrics.Mean(name="leash_loss") if getattr(self.config, "location_leash", 0) else None

    def hybrid_loss(self, ce, reinforce, baseline_mse, sample_weight=None, training=True, means=None):
        """The hybrid loss of RAM and DRAM from per-sample terms (B,): each averaged over the batch,
        tracked as a metric and weighted by the config's `ce_weight`, `reinforce_weight` and
        `baseline_weight`.

        `means` (B, T, 2), the policy means: tracked as `means_outside`, and with `location_leash`
        w > 0 a penalty w * mean_b sum_{t, coordinate} max(|mu| - clip, 0)^2 is added (the
        `leash_loss` metric). It is zero inside the clip and pulls a mean that has gone past it
        back; REINFORCE gives no such pull, since every sample beyond the clip glimpses at the
        same border location and earns the same reward (its gradient there is noise)."""
        ce, reinforce, baseline_mse = (weighted_mean(v, sample_weight) for v in (ce, reinforce, baseline_mse))
        self.ce_tracker.update_state(ce)
        self.reinforce_tracker.update_state(reinforce)
        self.baseline_tracker.update_state(baseline_mse)
        c = self.config
        leash = None
        if means is not None:
            beyond = ops.relu(ops.abs(means) - c.location_clip)  # (B, T, 2)
            self.outside_tracker.update_state(ops.mean(ops.cast(beyond > 0, "float32")))
            if self.leash_tracker is not None:
                leash = weighted_mean(ops.sum(ops.square(beyond), axis=(1, 2)), sample_weight)
                self.leash_tracker.update_state(leash)
        weight = c.reinforce_weight
        if self.policy_steps is not None:
            # Exactly zero before the step: Adam then makes no step on a layer whose only gradient
            # is REINFORCE (m and v stay 0), so the policy cannot random-walk to the border while
            # the reward is still noise (the classifier at chance).
            weight = weight * ops.cast(self.policy_steps >= c.policy_warmup_steps, ce.dtype)
            if training:
                self.policy_steps.assign(self.policy_steps + 1)
        loss = c.ce_weight * ce + weight * reinforce + c.baseline_weight * baseline_mse
        if leash is not None:
            loss = loss + c.location_leash * leash
        return self.with_regularisation(loss)

    def policy_std(self):
        """The location policy's std at this training step: the config's fixed `std`, or, with
        `std_anneal_steps` N > 0, linear from `std_start` at step 0 to `std` at step N and `std`
        after (a scalar tensor read from the saved step count, so a resumed run continues it)."""
        c = self.config
        if not getattr(c, "std_anneal_steps", 0):
            return None  # the LocationNetwork's own fixed std
        remaining = ops.clip(1.0 - ops.cast(self.policy_steps, "float32") / c.std_anneal_steps, 0.0, 1.0)
        return c.std + (c.std_start - c.std) * remaining

    def location_noise(self, batch, steps, deterministic=False):
        """Standard normal policy noise (B, steps, 2), scaled by `sampling`; zeros when deterministic."""
        if deterministic:
            return ops.zeros((batch, steps, 2))
        return keras.random.normal((batch, steps, 2), seed=self.seed_generator) * self.sampling
