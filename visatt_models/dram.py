"""Deep Recurrent Attention Model (DRAM): Ba, Mnih, Kavukcuoglu, "Multiple Object Recognition
with Visual Attention", ICLR 2015 (arXiv:1412.7755).

One class per box of the paper's Fig. 1, on the parts shared with RAM (`attention.py`):

    context network   the whole image, down-sampled to c x c, through convs -> r2's initial state
    glimpse network   retina (S concentric scales of g x g) -> convs -> FC: "what";
                      FC(l_t): "where"; g_t = what * where                       (Sec. 3.1)
    recurrent net     r1 = LSTM(g_t, r1), r2 = LSTM(r1, r2)                      (Sec. 3.2)
    emission network  l_{t+1} ~ N(Linear(r2), std^2)    (attention.LocationNetwork)
    classification    after every N glimpses, one hidden layer + softmax on r1 (Sec. 3.3)
    baseline          b_t = Linear(r2) (attention.BaselineNetwork)

Timing. Step t = 0 .. T-1 with T = N * P (N `glimpses_per_digit`, P emissions): the emission
network reads r2 and draws l_t (the first from r2's initial state, i.e. from the context), the
glimpse at l_t updates r1 then r2, and after steps N-1, 2N-1, ... the classifier reads r1. The
context reaches r2 only, so it steers where to look but cannot classify: for a given sequence
of locations, the classifications do not depend on it (tested). T is static per store, so the
model compiles once. The P emission groups (`emission_group`: N glimpses, then a classification)
run as a Python loop unrolled into the graph, or with `emission_loop="scan"` in `ops.scan`.

Emissions. On a sequence store P = max_length + 1: one softmax over the 10 digits and the
end-of-sequence class per emission, which is the sequence task's blank class (labels
`[1, 0, 5, 10, 10]` and an extra 10 for the sixth emission), so the task's `independent` head
layout, loss and decoding apply unchanged. `emissions` can lower P (e.g. 3 on `mnist-pairs`:
two digits and the end). On a single-digit store P = 1 and the model is a RAM with DRAM's
networks: one classification over the 10 digits after N glimpses.

Training (Sec. 3.3 and 4): the task's cross-entropy on every emission, plus REINFORCE on the
locations with a learnt baseline. Reward: emission k earns r_k = 1 while every emission up to k
is right ("digits right so far"); the glimpses of digit group k are credited with the return
sum_{j >= k} r_j, and only the groups up to and including the first wrong emission are
credited: the policy gradient of a sequence is truncated after its first mistake. As RAM
showed (README), the REINFORCE term reaching the shared networks at full weight swamps the
classifier: `reinforce_weight` sets how much of it reaches them (under Adam it does not scale
the emission network's own update, whose only gradient it is).

Evaluation: one sampled pass, a deterministic pass at the policy means, and Monte-Carlo
averaging of log-probabilities over location samples (`mc_average = "log_probabilities"`,
Sec. 4). A right-to-left model (`--reverse`, the task reads reversed labels) combines with a
left-to-right one in `visatt-eval --backward` (`evaluate.combine_forward_backward`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
from keras import layers, ops

from visatt_models.attention import (
    AttentionModel,
    BaselineNetwork,
    ConvGlimpseNetwork,
    LocationNetwork,
    check_policy_config,
    reinforce_terms,
    seeded_dense,
)
from visatt_models.cnn import conv_stack


@dataclasses.dataclass(frozen=True)
class DRAMConfig:
    """Everything that defines a DRAM model; `DRAM(config, task)` builds it.

    Paper settings (Sec. 4): glimpse convs 5x5, 3x3, 3x3 with 64, 64, 128 filters, LSTMs of 512,
    N = 3 glimpses per digit, two scales. `std` is in units of half the image size (l in
    [-1, 1]), like RAM's.
    """

    glimpses_per_digit: int = 3  # N
    emissions: int | None = None  # P; None: max_length + 1 on a sequence store, 1 on a digit store
    patch_size: int = 12  # g
    scales: int = 2  # S concentric patches of side g, 2g, ...
    conv_filters: tuple[int, ...] = (64, 64, 128)
    conv_kernels: tuple[int, ...] = (5, 3, 3)
    glimpse_size: int = 512  # the "what", "where" and g_t width
    lstm_units: int = 512
    classifier_hidden: int = 512
    context_size: int = 16  # c: side of the down-sampled whole image
    context_filters: tuple[int, ...] = (16, 16, 32)  # each conv ReLU + 2x2 max-pool
    context_kernels: tuple[int, ...] = (5, 3, 3)
    std: float = 0.11
    location_clip: float = 1.0
    location_mean: Literal["linear", "tanh"] = "linear"  # tanh: bounded, can come back from the clip
    # > 0: a penalty location_leash * sum over steps of max(|mean| - location_clip, 0)^2 per image
    # that pulls a policy mean gone past the clip back (AttentionModel.hybrid_loss); 0: none.
    location_leash: float = 0.0
    detach_policy_gradient: bool = False  # True: REINFORCE trains only the emission network
    ce_weight: float = 1.0
    reinforce_weight: float = 0.05
    # Optimizer steps with no REINFORCE term at all (the location policy keeps its initial, near-
    # centre means while cross-entropy trains the rest); 0: from the first step.
    policy_warmup_steps: int = 0
    # A std schedule: linear from `std_start` at step 0 to `std` at step `std_anneal_steps`, then
    # `std` (0 steps: `std` throughout). Counted in optimizer steps, saved with the model.
    std_start: float = 0.0
    std_anneal_steps: int = 0
    baseline_weight: float = 1.0
    # How the P emission groups run (the same numbers either way): "unrolled", a Python loop
    # unrolled into the graph; "scan", `ops.scan` over one compiled group, for JAX: on this CPU
    # its first training step took 28-52% less time, but every step after it was 10x slower
    # (XLA's CPU backend and convolutions inside a loop body), and TensorFlow gained nothing and
    # trains it without XLA. benchmarks/bench_dram_loop.py measures it; a GPU is untried.
    emission_loop: Literal["unrolled", "scan"] = "unrolled"
    seed: int = 0

    def __post_init__(self):
        for name in ("conv_filters", "conv_kernels", "context_filters", "context_kernels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.conv_filters) != len(self.conv_kernels) or len(self.context_filters) != len(self.context_kernels):
            raise ValueError("conv_filters/conv_kernels and context_filters/context_kernels must have equal lengths")
        for name in ("glimpses_per_digit", "patch_size", "scales", "glimpse_size", "lstm_units", "classifier_hidden",
                     "context_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.emissions is not None and self.emissions < 1:
            raise ValueError(f"emissions must be >= 1, got {self.emissions}")
        if self.emission_loop not in ("unrolled", "scan"):
            raise ValueError(f"emission_loop must be 'unrolled' or 'scan', got {self.emission_loop!r}")
        if self.context_size < 2 ** len(self.context_filters):  # each context conv halves the image
            raise ValueError(f"context_size {self.context_size} does not survive {len(self.context_filters)} 2x2 "
                             f"max-pools (needs >= {2 ** len(self.context_filters)})")
        check_policy_config(self)


@keras.saving.register_keras_serializable(package="visatt")
class ContextNetwork(layers.Layer):
    """The context network (Sec. 3.4): the whole image down-sampled (antialiased bilinear) to
    c x c, convs with 2x2 max-pooling, and a tanh FC: r2's initial hidden state (B, units)."""

    def __init__(self, size, filters, kernels, units, seed=0, **kwargs):
        super().__init__(**kwargs)
        self._args = dict(size=size, filters=tuple(filters), kernels=tuple(kernels), units=units, seed=seed)
        self.size = size
        if keras.backend.backend() == "tensorflow":
            # TensorFlow's antialiased resize (ScaleAndTranslate) has no XLA kernel: Keras must not
            # compile DRAM with XLA, which it would do by default on a TensorFlow GPU machine.
            self.supports_jit = False
        self.convs = conv_stack(filters, kernels, seed + 40, "context")
        self.flatten = layers.Flatten()
        self.fc = seeded_dense(units, seed + 50, "tanh", name="fc_context")

    def call(self, x):
        h = ops.image.resize(x, (self.size, self.size), interpolation="bilinear", antialias=True)  # (B, c, c, C)
        for layer in self.convs:
            h = layer(h)
        return self.fc(self.flatten(h))

    def get_config(self):
        return {**super().get_config(), **self._args}


@keras.saving.register_keras_serializable(package="visatt")
class DRAM(AttentionModel):
    """DRAM for a digit or a sequence task.

    Input: raw pixels (B, H, W, C), uint8. `call(images, training=False, deterministic=False,
    locations=None)` returns a dict:

        digit_logits (B, P, K + 1)  sequence task: digits and end-of-sequence per emission
        logits       (B, K)         digit task: the one emission
        locations    (B, T, 2)      l_t (y, x) in [-1, 1], clipped; T = N * P
        means        (B, T, 2)      the emission network's means
        log_pi       (B, T)
        baseline     (B, T)

    `locations` (B, T, 2) forces the glimpse locations (tests; the policy is not sampled).
    """

    config_cls = DRAMConfig
    mc_average = "log_probabilities"

    def __init__(self, config: DRAMConfig | None = None, task=None, **kwargs):
        super().__init__(config, task, **kwargs)
        config = self.config
        if config.emission_loop == "scan" and keras.backend.backend() == "tensorflow":
            # Keras' TensorFlow scan is a while loop without a maximum iteration count, whose
            # gradient XLA cannot build: Keras then trains without XLA (its default on a GPU).
            self.supports_jit = False
        self.emissions = config.emissions or (1 if self.task.kind == "digit" else self.task.max_length + 1)
        self.classes = self.task.num_classes + (self.task.kind == "sequence")  # + end of sequence
        seed = config.seed * 100
        units = config.lstm_units
        self.context_network = ContextNetwork(config.context_size, config.context_filters, config.context_kernels,
                                              units, seed=seed, name="context_network")
        self.glimpse_network = ConvGlimpseNetwork(config.patch_size, config.scales, config.conv_filters,
                                                  config.conv_kernels, config.glimpse_size, seed=seed,
                                                  name="glimpse_network")
        self.r1 = layers.LSTMCell(units, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 60),
                                  recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 61), name="r1")
        self.r2 = layers.LSTMCell(units, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 62),
                                  recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 63), name="r2")
        self.emission_network = LocationNetwork(config.std, config.location_clip, config.detach_policy_gradient,
                                                seed=seed, mean=config.location_mean, name="emission_network")
        self.baseline_network = BaselineNetwork(seed=seed, name="baseline_network")
        self.classifier_hidden = seeded_dense(config.classifier_hidden, seed + 70, "relu", name="classifier_hidden")
        self.classifier = seeded_dense(self.classes, seed + 71, name="classifier")

    @classmethod
    def check_task(cls, task, config=None) -> None:
        if task.kind == "sequence" and task.head != "independent":
            raise ValueError("DRAM emits one softmax per digit: it needs the sequence task's 'independent' head")
        if task.kind == "digit" and config is not None and config.emissions not in (None, 1):
            raise ValueError(f"a single-digit store has one emission, not emissions={config.emissions}")

    @property
    def steps(self) -> int:
        return self.config.glimpses_per_digit * self.emissions

    def build(self, images_shape):
        """`images_shape`: (B, H, W, C). One deterministic emission group on a blank image, outside
        any loop, builds every sublayer (the conv stacks need the real shapes; a layer cannot
        create its weights inside `ops.scan`), drawing no random numbers."""
        x = ops.zeros((1, *images_shape[1:]), "float32")
        n = self.config.glimpses_per_digit
        self.emission_group(self.initial_carry(x), {"noise": ops.zeros((1, n, 2))}, x, None)
        self.built = True

    def initial_carry(self, x):
        """The loop's carry before the first glimpse: the LSTM states (r1 at zero, r2's hidden state
        from the context network) and zeros in the slots of one emission group's outputs."""
        batch, n, units = ops.shape(x)[0], self.config.glimpses_per_digit, self.config.lstm_units
        zeros = ops.zeros((batch, units))
        return {
            "r1": (zeros, zeros),  # (h, c) of the lower LSTM: no context
            "r2": (self.context_network(x), zeros),  # the upper LSTM starts from the context
            "logits": ops.zeros((batch, self.classes)),
            "locations": ops.zeros((batch, n, 2)),
            "means": ops.zeros((batch, n, 2)),
            "log_pi": ops.zeros((batch, n)),
            "baseline": ops.zeros((batch, n)),
        }

    def emission_group(self, carry, xs, x, std):
        """One emission: N glimpses (each: the emission network reads r2 and draws l_t, the glimpse
        at l_t updates r1 then r2), then the classifier reads r1. `xs`: this group's policy `noise`
        (B, N, 2) and, to force the locations, `action` (B, N, 2). Returns the new carry twice:
        as the loop's carry and as its output (TensorFlow's `ops.scan` stacks outputs shaped like
        the carry), whose group slots hold logits (B, classes), locations and means (B, N, 2),
        log_pi and baseline (B, N)."""
        r1, r2 = carry["r1"], carry["r2"]
        locs, means, log_pis, baselines = [], [], [], []
        for j in range(self.config.glimpses_per_digit):
            action = xs["action"][:, j] if "action" in xs else None
            l_t, log_pi, mu_t = self.emission_network(r2[0], xs["noise"][:, j], action, std=std)  # (B, 2), (B,), (B, 2)
            baselines.append(self.baseline_network(r2[0]))  # b_t: (B,)
            g_t = self.glimpse_network(x, l_t)  # (B, glimpse_size)
            h1, r1 = self.r1(g_t, r1)
            _, r2 = self.r2(h1, r2)
            r1, r2 = tuple(r1), tuple(r2)
            locs.append(l_t)
            means.append(mu_t)
            log_pis.append(log_pi)
        carry = {
            "r1": r1,
            "r2": r2,
            "logits": self.classifier(self.classifier_hidden(h1)),  # (B, classes), read from r1
            "locations": ops.stack(locs, axis=1),
            "means": ops.stack(means, axis=1),
            "log_pi": ops.stack(log_pis, axis=1),
            "baseline": ops.stack(baselines, axis=1),
        }
        return carry, carry

    def call(self, images, training=False, deterministic=False, locations=None):
        cfg = self.config
        x = ops.cast(images, "float32") / 255.0  # (B, H, W, C) in [0, 1]
        batch, n, p = ops.shape(x)[0], cfg.glimpses_per_digit, self.emissions

        def by_group(v):  # (B, T, ...) -> (P, B, N, ...): the loop runs over the leading axis
            return ops.moveaxis(ops.reshape(v, (batch, p, n, *v.shape[2:])), 1, 0)

        xs = {"noise": by_group(self.location_noise(batch, self.steps, deterministic))}  # (P, B, N, 2)
        if locations is not None:
            xs["action"] = by_group(ops.cast(locations, "float32"))
        std = self.policy_std()  # None: the fixed std

        def step(carry, xs_k):
            return self.emission_group(carry, xs_k, x, std)

        carry = self.initial_carry(x)
        if cfg.emission_loop == "scan":
            _, stacked = ops.scan(step, carry, xs)  # each (P, B, ...)
        else:
            outputs = []
            for k in range(p):
                carry, out = step(carry, {key: v[k] for key, v in xs.items()})
                outputs.append(out)
            stacked = {key: ops.stack([o[key] for o in outputs]) for key in outputs[0]}

        def by_step(v):  # (P, B, N, ...) -> (B, T, ...)
            return ops.reshape(ops.moveaxis(v, 0, 1), (batch, self.steps, *v.shape[3:]))

        emitted = ops.moveaxis(stacked["logits"], 0, 1)  # (B, P, classes)
        heads = {"logits": emitted[:, 0]} if self.task.kind == "digit" else {"digit_logits": emitted}
        return {
            **heads,
            "locations": by_step(stacked["locations"]),  # (B, T, 2)
            "means": by_step(stacked["means"]),  # (B, T, 2)
            "log_pi": by_step(stacked["log_pi"]),  # (B, T)
            "baseline": by_step(stacked["baseline"]),  # (B, T)
        }

    def emission_correct(self, y, y_pred):
        """(B, P) float: whether each emission's most probable class is its label."""
        if self.task.kind == "digit":
            y = ops.cast(ops.reshape(y, (-1, 1)), "int32")
            return ops.cast(ops.argmax(y_pred["logits"], axis=-1)[:, None] == y, "float32")
        labels = self.task.labels_for(y, self.emissions)  # (B, P)
        return ops.cast(ops.cast(ops.argmax(y_pred["digit_logits"], axis=-1), "int32") == labels, "float32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """ce + reinforce_weight * REINFORCE + baseline_weight * baseline MSE (module docstring)."""
        ce, _ = self.task_loss(y, y_pred, sample_weight)  # (B,)
        right_so_far = ops.cumprod(self.emission_correct(y, y_pred), axis=1)  # r_k: (B, P)
        returns = ops.flip(ops.cumsum(ops.flip(right_so_far, axis=1), axis=1), axis=1)  # sum_{j >= k} r_j
        credited = ops.concatenate([ops.ones_like(right_so_far[:, :1]), right_so_far[:, :-1]], axis=1)  # up to the first mistake
        n = self.config.glimpses_per_digit
        reinforce, baseline_mse = reinforce_terms(y_pred["log_pi"], ops.repeat(returns, n, axis=1), y_pred["baseline"],
                                                  ops.repeat(credited, n, axis=1))  # (B,), (B,)
        return self.hybrid_loss(ce, reinforce, baseline_mse, sample_weight, training, y_pred.get("means"))

