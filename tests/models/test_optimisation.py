"""Learning-rate schedules and gradient clipping (TrainConfig -> train.make_optimizer)."""

import math

import keras
import numpy as np
import pytest

from visatt_models.config import TrainConfig
from visatt_models.train import make_optimizer


def lr_at(optimizer, step):
    return float(keras.ops.convert_to_numpy(optimizer._learning_rate(step)))


def test_constant_schedule_is_a_plain_learning_rate():
    optimizer = make_optimizer(TrainConfig(lr=0.01), steps_per_epoch=7)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)


def test_cosine_with_warm_up_follows_the_formula():
    train = TrainConfig(lr=0.02, epochs=5, schedule="cosine", warmup_epochs=1.5, final_lr_fraction=0.1)
    spe = 10
    optimizer = make_optimizer(train, steps_per_epoch=spe)
    warmup, total = 15, 50
    for step in [0, 1, 7, 15, 16, 30, 49, 50, 80]:
        if step < warmup:
            want = 0.02 * step / warmup
        else:
            progress = min(step - warmup, total - warmup) / (total - warmup)
            want = 0.02 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lr_at(optimizer, step) == pytest.approx(want, rel=1e-5, abs=1e-9), step


def test_step_schedule_follows_the_formula():
    optimizer = make_optimizer(TrainConfig(lr=0.1, epochs=30, schedule="step", step_epochs=4, step_factor=0.5), 10)
    for step in [0, 39, 40, 79, 80, 250]:
        assert lr_at(optimizer, step) == pytest.approx(0.1 * 0.5 ** (step // 40), rel=1e-6), step


@pytest.mark.parametrize("bad, match", [
    (dict(warmup_epochs=1), "cosine schedule"),
    (dict(schedule="cosine", warmup_epochs=10, epochs=10), "warm-up"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), "exclude"),
    (dict(schedule="step", step_factor=0.0), "step_factor"),
])
def test_bad_schedule_options_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_global_clipping_bounds_the_global_norm_and_keeps_the_direction():
    a, b = keras.Variable(np.zeros(3, "float32")), keras.Variable(np.zeros(2, "float32"))
    grads = [np.array([3.0, 0.0, 0.0], "float32"), np.array([0.0, 4.0], "float32")]  # global norm 5
    optimizer = make_optimizer(TrainConfig(lr=1.0, optimizer="sgd", momentum=0.0, global_clipnorm=1.0), 1)
    optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], [a, b]))
    step = np.concatenate([-keras.ops.convert_to_numpy(a), -keras.ops.convert_to_numpy(b)])
    np.testing.assert_allclose(step, np.array([0.6, 0.0, 0.0, 0.0, 0.8]), rtol=1e-5)
    # per-variable clipping would have moved by norm 1 in each variable instead
    c = keras.Variable(np.zeros(3, "float32"))
    per = make_optimizer(TrainConfig(lr=1.0, optimizer="sgd", momentum=0.0, clipnorm=1.0), 1)
    per.apply_gradients([(keras.ops.convert_to_tensor(grads[0]), c)])
    np.testing.assert_allclose(-keras.ops.convert_to_numpy(c), [1.0, 0.0, 0.0], rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_weight_decay_shrinks_every_variable_by_lr_times_decay_apart_from_the_gradient(name):
    v = keras.Variable(np.array([2.0, -4.0], "float32"))
    optimizer = make_optimizer(TrainConfig(lr=0.1, optimizer=name, momentum=0.0, weight_decay=0.5), 1)
    optimizer.apply_gradients([(keras.ops.zeros((2,)), v)])  # no gradient: only the decay moves it
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), [2.0 * 0.95, -4.0 * 0.95], rtol=1e-6)
    plain = keras.Variable(np.array([2.0, -4.0], "float32"))
    make_optimizer(TrainConfig(lr=0.1, optimizer=name), 1).apply_gradients([(keras.ops.zeros((2,)), plain)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain), [2.0, -4.0])


def test_weight_decay_comes_back_with_a_saved_optimizer():
    """A resumed run's optimizer is the one in its checkpoint: the decay must be in its config."""
    optimizer = make_optimizer(TrainConfig(weight_decay=0.01), 1)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert again.weight_decay == pytest.approx(0.01)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=-0.1)
