"""RAM: shapes, the hybrid loss's gradient flow, fit, saving, seeding, Monte-Carlo evaluation.

Runs on whichever Keras backend the environment selects (KERAS_BACKEND).
"""

import dataclasses
import math

import keras
import numpy as np
import pytest

from visatt_models import registry
from visatt_models.evaluate import mc_log_probs
from visatt_models.ram import RAM, RAMConfig
from visatt_models.tasks import DigitTask


def preset(name):
    return registry.make_config(registry.get_model_spec("ram"), preset=name)

TINY = RAMConfig(glimpses=3, patch_size=4, scales=2, glimpse_hidden=8, location_hidden=8,
                 glimpse_size=16, core_size=16, seed=3)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 20, 24, 1), dtype=np.uint8)  # non-square on purpose
    labels = rng.integers(0, 10, 8).astype(np.uint8)
    return images, labels


def weights_of(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


def changed(before, after):
    return any(np.any(a != b) for a, b in zip(before, after))


def fit_one_step(model, images, labels):
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model.fit(images, labels, batch_size=len(images), epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize("core", ["lstm", "rnn"])
def test_output_shapes(batch, core):
    images, _ = batch
    model = RAM(dataclasses.replace(TINY, core=core, location_clip=0.5))
    out = model(images)
    assert tuple(out["logits"].shape) == (8, 10)
    assert tuple(out["locations"].shape) == (8, 3, 2)
    assert tuple(out["means"].shape) == (8, 3, 2)
    assert tuple(out["log_pi"].shape) == (8, 3)
    assert tuple(out["baseline"].shape) == (8, 3)
    assert np.abs(np.asarray(out["locations"])).max() <= 0.5  # clipped


def test_log_pi_is_the_gaussian_density_of_the_sample(batch):
    images, _ = batch
    config = dataclasses.replace(TINY, std=0.3, location_clip=100.0)  # no clipping
    out = RAM(config)(images)
    l, mu = np.asarray(out["locations"]), np.asarray(out["means"])
    expected = np.sum(-0.5 * ((l - mu) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi), -1)
    np.testing.assert_allclose(np.asarray(out["log_pi"]), expected, rtol=1e-5, atol=1e-5)
    # The samples really are spread around the means with the configured std.
    assert 0.1 < np.std(l - mu) < 0.6


@pytest.mark.parametrize("core", ["lstm", "rnn"])
def test_fit_step_tracks_every_loss_term(batch, core):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, core=core))
    history = fit_one_step(model, images, labels).history
    for name in ("loss", "ce_loss", "reinforce_loss", "baseline_loss", "accuracy"):
        assert name in history and np.isfinite(history[name][0]), name
    cfg = model.config
    parts = cfg.ce_weight * history["ce_loss"][0] + cfg.reinforce_weight * history["reinforce_loss"][0]
    parts += cfg.baseline_weight * history["baseline_loss"][0]
    assert history["loss"][0] == pytest.approx(parts, rel=1e-4, abs=1e-5)
    assert history["ce_loss"][0] > 0 and history["baseline_loss"][0] > 0
    logs = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert {"ce_loss", "reinforce_loss", "baseline_loss", "accuracy"} <= set(logs)


def test_reinforce_alone_trains_the_location_network(batch):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, ce_weight=0.0, baseline_weight=0.0))
    model(images)
    location, core = weights_of(model.location_network), weights_of(model.core_network)
    action = weights_of(model.action_network)
    fit_one_step(model, images, labels)
    assert changed(location, weights_of(model.location_network))
    # Undetached, the policy gradient reaches the core (paper); the classifier gets none.
    assert changed(core, weights_of(model.core_network))
    assert not changed(action, weights_of(model.action_network))


def test_detached_policy_gradient_stops_at_h_t(batch):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, ce_weight=0.0, baseline_weight=0.0,
                                    detach_policy_gradient=True))
    model(images)
    location, core = weights_of(model.location_network), weights_of(model.core_network)
    glimpse = weights_of(model.glimpse_network)
    fit_one_step(model, images, labels)
    assert changed(location, weights_of(model.location_network))
    assert not changed(core, weights_of(model.core_network))
    assert not changed(glimpse, weights_of(model.glimpse_network))


def test_cross_entropy_alone_cannot_reach_the_location_network(batch):
    """CE depends on the policy only through sampled (stop-gradient'ed) locations."""
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, reinforce_weight=0.0, baseline_weight=0.0))
    model(images)
    location, baseline = weights_of(model.location_network), weights_of(model.baseline_network)
    core, action = weights_of(model.core_network), weights_of(model.action_network)
    fit_one_step(model, images, labels)
    assert not changed(location, weights_of(model.location_network))
    assert not changed(baseline, weights_of(model.baseline_network))
    assert changed(core, weights_of(model.core_network))
    assert changed(action, weights_of(model.action_network))


def test_compute_loss_matches_the_hybrid_loss_formula():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]], np.float32)  # predicts 0, 2
    labels = np.array([0, 1])  # R = [1, 0]
    log_pi = np.array([[-1.0, -2.0], [-0.5, -3.0]], np.float32)
    baseline = np.array([[0.25, 0.5], [0.75, 0.0]], np.float32)
    reward = np.array([1.0, 0.0])
    ce = -np.log(np.exp(logits[[0, 1], labels]) / np.exp(logits).sum(1))
    reinforce = np.sum(-log_pi * (reward[:, None] - baseline), axis=1)
    mse = np.mean((baseline - reward[:, None]) ** 2, axis=1)
    config = dataclasses.replace(TINY, ce_weight=0.5, reinforce_weight=2.0, baseline_weight=3.0)
    model = RAM(config, DigitTask(num_classes=3))
    y_pred = {"logits": logits, "log_pi": log_pi, "baseline": baseline}
    loss = float(model.compute_loss(y=labels, y_pred=y_pred))
    expected = 0.5 * ce.mean() + 2.0 * reinforce.mean() + 3.0 * mse.mean()
    assert loss == pytest.approx(expected, rel=1e-5)
    metrics = {m.name: float(m.result()) for m in model.metrics}
    assert metrics["reinforce_loss"] == pytest.approx(reinforce.mean(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_policy_learns_to_look_where_the_evidence_is():
    """A one-glimpse bandit: the class shows only as a square near the top-left corner, which a
    4x4 glimpse at the starting location (the centre) cannot see. REINFORCE must move the mean
    location towards that corner; a wrong sign or a blocked gradient leaves it near 0 or sends
    it elsewhere, and the accuracy stays at chance."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1024).astype(np.uint8)
    images = np.zeros((1024, 16, 16, 1), np.uint8)
    images[labels == 1, 1:5, 1:5] = 255
    config = RAMConfig(glimpses=1, patch_size=4, scales=1, glimpse_hidden=16, location_hidden=8,
                       glimpse_size=16, core="rnn", core_size=16, std=0.5, seed=0)
    model = RAM(config, DigitTask(num_classes=2))
    start = np.asarray(model(images[:4], deterministic=True)["means"])[0, 0]
    np.testing.assert_array_equal(start, [0.0, 0.0])  # l_0 = bias = 0: the image centre
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    history = model.fit(images, labels, batch_size=256, epochs=15, verbose=0, shuffle=False)
    end = np.asarray(model(images[:4], deterministic=True)["means"])[0, 0]
    assert np.all(end < -0.5), end
    assert history.history["accuracy"][-1] > 0.9


def test_same_seed_same_model_other_seed_other_model(batch):
    images, _ = batch
    a, b, c = RAM(TINY), RAM(TINY), RAM(dataclasses.replace(TINY, seed=4))
    out_a, out_b, out_c = a(images), b(images), c(images)
    for key in ("logits", "locations", "log_pi", "baseline"):
        np.testing.assert_array_equal(np.asarray(out_a[key]), np.asarray(out_b[key]))
    assert not np.array_equal(np.asarray(out_a["locations"]), np.asarray(out_c["locations"]))
    assert changed(weights_of(a), weights_of(c))


def test_sampling_advances_and_deterministic_mode_does_not(batch):
    images, _ = batch
    model = RAM(TINY)
    first, second = model(images)["locations"], model(images)["locations"]
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    det = [np.asarray(model(images, deterministic=True)["logits"]) for _ in range(2)]
    np.testing.assert_array_equal(*det)


def test_save_and_reload_give_identical_outputs(batch, tmp_path):
    images, labels = batch
    model = RAM(TINY)
    fit_one_step(model, images, labels)  # trained weights, advanced seed state
    path = tmp_path / "ram.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, RAM) and loaded.config == model.config
    for _ in range(2):  # the same draws, call after call
        out, again = model(images), loaded(images)
        for key in ("logits", "locations", "log_pi", "baseline"):
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(again[key]))


def test_mc_average_is_per_image(batch):
    images, _ = batch
    # A near-zero std makes every sample glimpse at the means: MC must then equal the
    # deterministic softmax image by image (catches samples mixed up across images).
    model = RAM(dataclasses.replace(TINY, std=1e-6))
    model.compile()
    log_probs = mc_log_probs(model, images, samples=5)["logits"]
    assert log_probs.shape == (8, 10)
    probs = np.exp(log_probs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    logits = np.asarray(model(images, deterministic=True)["logits"])
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_mc_average_is_over_samples(batch):
    images, _ = batch
    model = RAM(dataclasses.replace(TINY, std=0.5))
    model.compile()
    single = np.exp(mc_log_probs(model, images, samples=1)["logits"])
    many = np.exp(mc_log_probs(model, images, samples=6)["logits"])
    np.testing.assert_allclose(many.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(single, many)
    # The average of the probabilities, not of the log-probabilities (RAM's mc_average).
    tiled = np.tile(images, (3, 1, 1, 1))
    state = np.asarray(model.seed_generator.state)
    logits = np.asarray(model.predict_on_batch(tiled)["logits"], np.float64).reshape(3, 8, 10)
    model.seed_generator.state.assign(state)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(mc_log_probs(model, images, samples=3)["logits"]), p.mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,size", [("paper-28", 28), ("paper-60", 60), ("paper-100", 100)])
def test_presets_build_on_their_canvas(name, size):
    config = preset(name)
    assert config.core == "rnn"
    model = RAM(config)
    out = model(np.zeros((2, size, size, 1), np.uint8))
    assert tuple(out["locations"].shape) == (2, config.glimpses, 2)
    sensor = config.scales * config.patch_size**2
    assert model.glimpse_network.fc_glimpse.kernel.shape == (sensor, config.glimpse_hidden)


def test_config_rejects_unknown_core():
    with pytest.raises(ValueError):
        RAMConfig(core="gru")


@pytest.mark.parametrize("name,size", [("visatt-60", 60), ("visatt-100", 100)])
def test_tuned_presets_differ_from_the_paper_only_in_core_and_policy_weight(name, size):
    config = preset(name)
    paper = preset(name.replace("visatt", "paper"))
    assert (config.core, config.reinforce_weight, config.detach_policy_gradient) == ("lstm", 0.05, False)
    assert (config.glimpses, config.patch_size, config.scales) == (paper.glimpses, paper.patch_size, paper.scales)
    out = RAM(config)(np.zeros((2, size, size, 1), np.uint8))
    assert tuple(out["logits"].shape) == (2, 10)


def test_a_tanh_location_mean_stays_inside_and_still_learns(batch):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, location_mean="tanh", ce_weight=0.0, baseline_weight=0.0))
    out = model(images * 0 + 255, deterministic=True)
    layer = model.location_network
    layer.fc.kernel.assign(np.full(layer.fc.kernel.shape, 50.0, "float32"))  # a linear mean far past the clip
    means = np.asarray(model(images, deterministic=True)["means"])
    linear = RAM(dataclasses.replace(model.config, location_mean="linear"))
    linear(images)
    linear.set_weights(model.get_weights())
    assert np.abs(np.asarray(linear(images, deterministic=True)["means"])).max() > 5
    assert np.all(np.abs(means) <= 1) and np.abs(means).max() > 0.99
    before = weights_of(layer)
    fit_one_step(model, images, labels)
    assert changed(before, weights_of(layer))
    assert out["means"].shape == (8, TINY.glimpses, 2)
    with pytest.raises(ValueError, match="location_mean"):
        RAMConfig(location_mean="sigmoid")


def test_a_std_schedule_follows_its_formula_and_survives_saving(tmp_path):
    """std_start 0.4 -> std 0.1 over 4 steps: the std at step k is 0.1 + 0.3 * max(0, 1 - k/4),
    the samples spread with it, log pi is the density under it, and a saved model continues it."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (512, 20, 24, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 512).astype(np.uint8)
    config = dataclasses.replace(TINY, std=0.1, std_start=0.4, std_anneal_steps=4, location_clip=100.0)
    model = RAM(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    for step in range(6):
        std = 0.1 + 0.3 * max(0.0, 1 - step / 4)
        assert float(keras.ops.convert_to_numpy(model.policy_std())) == pytest.approx(std, rel=1e-6)
        out = model(images)
        l, mu = np.asarray(out["locations"]), np.asarray(out["means"])
        assert np.std(l - mu) == pytest.approx(std, rel=0.1)
        expected = np.sum(-0.5 * ((l - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi), -1)
        np.testing.assert_allclose(np.asarray(out["log_pi"]), expected, rtol=1e-4, atol=1e-4)
        model.fit(images[:8], labels[:8], batch_size=8, epochs=1, verbose=0, shuffle=False)  # one step
        if step == 1:  # mid-schedule: a reloaded model continues from step 2
            model.save(tmp_path / "ram.keras")
    loaded = keras.models.load_model(tmp_path / "ram.keras")
    assert float(keras.ops.convert_to_numpy(loaded.policy_std())) == pytest.approx(0.1 + 0.3 * 0.5, rel=1e-6)
    assert RAM(TINY).policy_std() is None  # no schedule: the fixed std, as before
    with pytest.raises(ValueError, match="std_start"):
        RAMConfig(std_anneal_steps=10)
    with pytest.raises(ValueError, match="std_anneal_steps"):
        RAMConfig(std_anneal_steps=-1)
    with pytest.raises(ValueError, match="std_anneal_steps"):
        RAMConfig(std_start=0.3)  # a start without a schedule would be ignored


def test_a_location_leash_penalises_only_means_beyond_the_clip():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]], np.float32)
    labels = np.array([0, 1])
    log_pi = np.array([[-1.0, -2.0], [-0.5, -3.0]], np.float32)
    baseline = np.array([[0.25, 0.5], [0.75, 0.0]], np.float32)
    means = np.array([[[0.5, -1.5], [0.9, 0.0]], [[2.0, -3.0], [-0.2, 1.0]]], np.float32)  # (B, T, 2), clip 1
    y_pred = {"logits": logits, "log_pi": log_pi, "baseline": baseline, "means": means}
    plain = RAM(TINY, DigitTask(num_classes=3))
    base_loss = float(plain.compute_loss(y=labels, y_pred=y_pred))
    # Beyond the clip: 0.5 (image 0), 1.0 and 2.0 (image 1); 3 of the 8 coordinates are outside.
    assert {m.name: float(m.result()) for m in plain.metrics}["means_outside"] == pytest.approx(3 / 8)
    leashed = RAM(dataclasses.replace(TINY, location_leash=0.1), DigitTask(num_classes=3))
    loss = float(leashed.compute_loss(y=labels, y_pred=y_pred))
    leash = np.mean([0.5**2, 1.0**2 + 2.0**2])
    assert loss == pytest.approx(base_loss + 0.1 * leash, rel=1e-5)
    assert {m.name: float(m.result()) for m in leashed.metrics}["leash_loss"] == pytest.approx(leash, rel=1e-5)
    inside = {**y_pred, "means": np.clip(means, -1, 1)}
    assert float(RAM(dataclasses.replace(TINY, location_leash=0.1), DigitTask(num_classes=3))
                 .compute_loss(y=labels, y_pred=inside)) == pytest.approx(base_loss, rel=1e-5)
    # The penalty starts at the configured clip (0.5 here: beyond it 1.0, 0.4, 1.5, 2.5, 0.5).
    clipped = RAM(dataclasses.replace(TINY, location_leash=0.1, location_clip=0.5), DigitTask(num_classes=3))
    clipped.compute_loss(y=labels, y_pred=y_pred)
    expected = np.mean([1.0**2 + 0.4**2, 1.5**2 + 2.5**2 + 0.5**2])
    assert {m.name: float(m.result()) for m in clipped.metrics}["leash_loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="location_leash"):
        RAMConfig(location_leash=-1.0)
    with pytest.raises(ValueError, match="location_leash"):
        RAMConfig(location_leash=0.1, location_mean="tanh")


def test_a_location_leash_pulls_a_mean_past_the_clip_back(batch):
    images, labels = batch
    # Only the leash trains (REINFORCE gives no pull back for a mean whose samples all clip to the border).
    model = RAM(dataclasses.replace(TINY, location_leash=1.0, ce_weight=0.0, reinforce_weight=0.0,
                                    baseline_weight=0.0))
    model(images)
    layer = model.location_network
    layer.fc.bias.assign(np.array([3.0, -3.0], "float32"))  # every mean far past the clip
    before = np.abs(np.asarray(model(images, deterministic=True)["means"])).mean()
    assert before > 1.5
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(images, labels, batch_size=len(images), epochs=20, verbose=0, shuffle=False).history
    after = np.abs(np.asarray(model(images, deterministic=True)["means"])).mean()
    assert after < before - 0.2
    assert history["means_outside"][0] > 0.5 and history["leash_loss"][-1] < history["leash_loss"][0]


def test_dropout_acts_in_training_only_and_its_masks_survive_saving(batch, tmp_path):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, dropout=0.5))
    plain = RAM(TINY)

    def logits(m, training):  # at the policy means, so any difference between calls is dropout's
        return np.asarray(m(images, training=training, deterministic=True)["logits"])

    np.testing.assert_array_equal(logits(model, False), logits(model, False))
    np.testing.assert_allclose(logits(model, False), logits(plain, False), rtol=1e-5, atol=1e-6)
    masked = logits(model, True)
    assert not np.allclose(masked, logits(model, False))
    assert not np.allclose(masked, logits(model, True))  # a fresh mask per call
    fit_one_step(model, images, labels)
    path = tmp_path / "ram.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(logits(model, True), logits(loaded, True))


def test_config_rejects_a_dropout_outside_0_1():
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout"):
            RAMConfig(dropout=rate)


def test_the_mean_path_term_is_the_task_loss_at_the_means(batch):
    images, labels = batch
    config = dataclasses.replace(TINY, ce_weight=0.5, reinforce_weight=2.0, baseline_weight=3.0,
                                 mean_path_weight=0.7)
    model, plain = RAM(config), RAM(dataclasses.replace(config, mean_path_weight=0.0))
    y_pred = model(images)
    at_means = model(images, deterministic=True)
    expected_extra = float(np.mean(np.asarray(model.task.loss(labels, at_means))))
    hybrid = float(plain.compute_loss(x=images, y=labels, y_pred=y_pred))
    loss = float(model.compute_loss(x=images, y=labels, y_pred=y_pred))
    assert expected_extra > 0
    assert loss == pytest.approx(hybrid + 0.7 * expected_extra, rel=1e-5)
    metrics = {m.name: float(m.result()) for m in model.metrics}
    assert metrics["mean_path_ce"] == pytest.approx(expected_extra, rel=1e-5)
    # In evaluation the term is tracked, not added: the loss there is the hybrid loss alone.
    model.mean_path_tracker.reset_state()
    assert float(model.compute_loss(x=images, y=labels, y_pred=y_pred, training=False)) == pytest.approx(
        float(plain.compute_loss(x=images, y=labels, y_pred=y_pred, training=False)), rel=1e-5)
    assert float(model.mean_path_tracker.result()) == pytest.approx(expected_extra, rel=1e-5)


def test_the_mean_path_term_alone_trains_the_classifier_not_the_policy(batch):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, ce_weight=0.0, reinforce_weight=0.0, baseline_weight=0.0,
                                    mean_path_weight=1.0))
    model(images)
    location, baseline = weights_of(model.location_network), weights_of(model.baseline_network)
    core, action = weights_of(model.core_network), weights_of(model.action_network)
    history = fit_one_step(model, images, labels).history
    assert history["mean_path_ce"][0] > 0
    assert not changed(location, weights_of(model.location_network))
    assert not changed(baseline, weights_of(model.baseline_network))
    assert changed(core, weights_of(model.core_network))
    assert changed(action, weights_of(model.action_network))


def test_dropout_and_the_mean_path_train_together_and_need_the_images(batch):
    images, labels = batch
    model = RAM(dataclasses.replace(TINY, dropout=0.3, mean_path_weight=0.5))
    history = fit_one_step(model, images, labels).history
    assert np.isfinite(history["loss"][0]) and history["mean_path_ce"][0] > 0
    with pytest.raises(ValueError, match="needs the images"):
        model.compute_loss(y=labels, y_pred=model(images))


CONV = dataclasses.replace(TINY, glimpse_network="conv", conv_filters=(4, 6), conv_kernels=(3, 3))


def test_a_conv_glimpse_network_is_drams_and_trains_every_part(batch, tmp_path):
    images, labels = batch
    model = RAM(CONV)
    out = model(images)
    assert tuple(out["logits"].shape) == (8, 10) and tuple(out["locations"].shape) == (8, 3, 2)
    glimpse = model.glimpse_network
    # The scales stacked as channels (2 scales x 1 channel) into the first conv, 'same' padding:
    # "what" reads 4 x 4 x 6 features.
    assert tuple(glimpse.convs[0].kernel.shape) == (3, 3, 2, 4)
    assert tuple(glimpse.fc_what.kernel.shape) == (4 * 4 * 6, TINY.glimpse_size)
    assert tuple(glimpse.fc_where.kernel.shape) == (2, TINY.glimpse_size)
    before = weights_of(glimpse)
    fit_one_step(model, images, labels)
    after = weights_of(glimpse)
    assert all(np.any(a != b) for a, b in zip(before, after))  # every conv and FC weight learns
    path = tmp_path / "ram-conv.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.config == model.config and loaded.config.conv_filters == (4, 6)
    for key in ("logits", "locations", "log_pi"):
        np.testing.assert_array_equal(np.asarray(model(images)[key]), np.asarray(loaded(images)[key]))


def test_a_conv_glimpse_network_is_seeded_and_differs_from_the_dense_one(batch):
    images, _ = batch
    a, b = RAM(CONV)(images), RAM(CONV)(images)
    np.testing.assert_array_equal(np.asarray(a["logits"]), np.asarray(b["logits"]))
    dense = RAM(TINY)(images)
    assert not np.allclose(np.asarray(a["logits"]), np.asarray(dense["logits"]))


@pytest.mark.parametrize("bad", [{"glimpse_network": "mlp"}, {"conv_filters": (4,)}, {"conv_filters": (4, 0)}])
def test_config_rejects_a_bad_glimpse_network(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(CONV, **bad)


def test_the_conv_preset_is_visatt_60_with_conv_glimpses_and_a_leash():
    conv, dense = preset("visatt-60-conv"), preset("visatt-60")
    assert dataclasses.replace(conv, glimpse_network="dense", conv_filters=dense.conv_filters, location_leash=0.0) == dense
    assert (conv.glimpse_network, conv.conv_filters, conv.location_leash) == ("conv", (16, 16, 32), 1.0)
    model = RAM(conv)
    assert tuple(model(np.zeros((2, 60, 60, 1), np.uint8))["logits"].shape) == (2, 10)
    assert tuple(model.glimpse_network.convs[0].kernel.shape) == (5, 5, 3, 16)  # 3 scales as channels
