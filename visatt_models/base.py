"""The model base: a config dataclass, a task, the task's loss and metrics, and saving.

Every visatt model subclasses `VisattModel`:

    class CNN(VisattModel):
        config_cls = CNNConfig

        def __init__(self, config=None, task=None, **kwargs):
            super().__init__(config, task, **kwargs)
            ...                                    # layers from self.config; heads: TaskHead(self.task)

        def call(self, images, training=False):
            return {**self.head(features)}         # the task's head outputs, plus anything else

What the base does, once for every model:
- `get_config`/`from_config` from the config dataclass and the task, so a saved `.keras` file
  rebuilds the same model;
- `compute_loss`: the task's per-sample loss, averaged (sample weights respected), with the task's
  metrics tracked from per-sample values (exact over an evaluation). A model with more loss
  terms (RAM's REINFORCE) overrides `compute_loss` and calls `task_loss`;
- the state of every `keras.random.SeedGenerator` in the model (dropout masks, location noise)
  is saved with its weights and restored on load, so a reloaded or resumed model draws the same
  random numbers as the original would have.

Precision: a model takes Keras' `dtype` ("float32", or "mixed_bfloat16": bfloat16 compute on
float32 weights, faster where bfloat16 is native: CPUs with AMX, docs/models.md). Its layers are made
under `policy_scope(dtype)`, the task's heads stay float32 (the losses and decoding read float32
logits), and `get_config` records it. Only models with `mixed_precision = True` take a mixed
policy (RAM and DRAM sample locations, whose log-probabilities bfloat16's 8-bit mantissa would
blur).

`stochastic = True` says the model's outputs depend on random draws at inference (RAM's
locations): the evaluator then adds Monte-Carlo averaging over several draws, combining the
heads' probabilities (`mc_average = "probabilities"`) or log-probabilities.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ClassVar

import keras
from keras import ops

from visatt_models import config as cfg
from visatt_models.tasks import DigitTask, Task, task_from_dict, task_to_dict

_SEED_KEY = "seed_state_"


@contextlib.contextmanager
def policy_scope(policy):
    """Keras' global dtype policy set to `policy` (a name or DTypePolicy; None: unchanged) while
    inside, so that the layers made there take it."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class VisattModel(keras.Model):
    """Base class: `Model(config, task)`; outputs are a dict holding the task's heads."""

    config_cls: ClassVar[type]
    stochastic: ClassVar[bool] = False
    mc_average: ClassVar[str] = "probabilities"  # or "log_probabilities"
    mixed_precision: ClassVar[bool] = False  # whether the model takes dtype="mixed_bfloat16"

    def __init__(self, config=None, task: Task | None = None, **kwargs):
        super().__init__(**kwargs)
        self.check_precision(self.dtype_policy)
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise TypeError(f"{type(self).__name__} takes a {self.config_cls.__name__}, got {type(self.config).__name__}")
        self.task = task if task is not None else DigitTask()
        self.check_task(self.task, self.config)
        self.task_metrics = [keras.metrics.Mean(name=name) for name in self.task.metric_names]

    @classmethod
    def check_task(cls, task: Task, config=None) -> None:
        """Raise ValueError when the model (with `config`) cannot serve `task` (any, unless overridden)."""

    @classmethod
    def check_precision(cls, policy) -> None:
        """Raise ValueError when `policy` (a Keras dtype policy or its name) is a mixed one and the
        model takes none (a whole-precision policy, e.g. a user's global float64, passes)."""
        policy = keras.dtype_policies.get(policy)
        if policy.compute_dtype != policy.variable_dtype and not cls.mixed_precision:
            raise ValueError(f"{cls.__name__} trains in float32 only (its sampled locations' log-probabilities need "
                             f"float32); {policy.name} is for cnn and stn")

    @classmethod
    def makes_frames(cls, config) -> bool:
        """Whether the model (with `config`) emits a sequence of frames, for the `ctc` head (no,
        unless overridden)."""
        return False

    @classmethod
    def check_input(cls, task: Task, config, image_shape) -> None:
        """Raise ValueError when the model (with `config`) cannot read images of `image_shape`
        (H, W[, C]) for `task` (any, unless overridden)."""

    # ------------------------------------------------------------ loss and metrics

    def task_loss(self, y, y_pred, sample_weight=None):
        """The task's loss (B,) and whether each sample is right (B,) float; updates the task metrics."""
        loss = self.task.loss(y, y_pred)
        log_probs = {name: ops.log_softmax(y_pred[name], axis=-1) for name in self.task.head_shapes()}
        values = self.task.per_sample(y, self.task.decode(log_probs))
        for metric in self.task_metrics:
            value, mask = values[metric.name]
            weight = mask
            if sample_weight is not None:
                w = ops.reshape(ops.cast(sample_weight, value.dtype), (-1,) + (1,) * (len(value.shape) - 1))
                weight = w * (ops.ones_like(value) if mask is None else mask)
            metric.update_state(ops.reshape(value, (-1,)), None if weight is None else ops.reshape(weight, (-1,)))
        return loss, values[self.task.selection_metric][0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, _ = self.task_loss(y, y_pred, sample_weight)
        return self.with_regularisation(weighted_mean(loss, sample_weight))

    def with_regularisation(self, loss):
        return loss + ops.sum(self.losses) if self.losses else loss

    # ------------------------------------------------------------ serialisation

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "dtype": self.dtype_policy.name,
                "config": dataclasses.asdict(self.config), "task": task_to_dict(self.task)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model_config = cfg.config_from_dict(cls.config_cls, config.pop("config"))
        task = task_from_dict(config.pop("task")) if "task" in config else None
        return cls(model_config, task, **config)

    # The states of SeedGenerators are not weights, so Keras would not save them.
    def _seed_states(self) -> list:
        return [v for v in self.variables if v.path.endswith("seed_generator_state")]

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, state in enumerate(self._seed_states()):
            store[f"{_SEED_KEY}{i}"] = state

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        keys = [k for k in store.keys() if k.startswith(_SEED_KEY)]
        if len(store.keys()) - len(keys) != len(own):
            raise ValueError(f"{self.name}: the saved model has {len(store.keys()) - len(keys)} variables of its own, "
                             f"this one {len(own)}")
        for i, v in enumerate(own):
            v.assign(store[f"{i}"])
        states = self._seed_states()
        if keys and len(keys) != len(states):
            raise ValueError(f"the saved model has {len(keys)} random generator states, this one {len(states)}")
        for i, state in enumerate(states[: len(keys)]):
            state.assign(ops.cast(store[f"{_SEED_KEY}{i}"], state.dtype))


def weighted_mean(values, sample_weight=None):
    """Mean over the batch of per-sample `values` (B,), weighted by `sample_weight` (B,) when given."""
    if sample_weight is None:
        return ops.mean(values)
    w = ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    return ops.sum(values * w) / ops.maximum(ops.sum(w), 1e-12)
