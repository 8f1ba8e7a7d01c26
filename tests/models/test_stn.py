"""STN: shapes, identity / zoom initialisation, fit (gradients reach the localisation net),
saving, seeding.

Runs on whichever Keras backend the environment selects (KERAS_BACKEND).
"""

import dataclasses

import keras
import numpy as np
import pytest

from visatt_models.stn import STN, STNConfig

TINY = STNConfig(loc_filters=(4,), loc_dense=(8,), cls_filters=(4, 8), cls_dense=16, seed=1)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 20, 28, 1), dtype=np.uint8)  # non-square on purpose
    labels = rng.integers(0, 10, 6).astype(np.uint8)
    return images, labels


def weights_of(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


@pytest.mark.parametrize("output_size", [None, (12, 16)])
def test_output_shapes(batch, output_size):
    images, _ = batch
    out = STN(dataclasses.replace(TINY, output_size=output_size))(images)
    h, w = output_size or (20, 28)
    assert tuple(out["logits"].shape) == (6, 10)
    assert tuple(out["theta"].shape) == (6, 2, 3)
    assert tuple(out["transformed"].shape) == (6, h, w, 1)


def test_identity_init_passes_the_image_through_exactly(batch):
    images, _ = batch
    out = STN(TINY)(images)
    identity = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    np.testing.assert_array_equal(np.asarray(out["theta"]), np.broadcast_to(identity, (6, 2, 3)))
    scaled = keras.ops.cast(images, "float32") / 255.0  # the model's own scaling, same backend
    np.testing.assert_array_equal(np.asarray(out["transformed"]), np.asarray(scaled))


def test_zoom_init_magnifies_the_centre():
    # A 9x9 image and zoom 0.5: the 9x9 output spans source pixels 2..6 in half-pixel steps.
    image = np.zeros((1, 9, 9, 1), np.uint8)
    image[0, 2:7, 2:7, 0] = 255
    out = STN(dataclasses.replace(TINY, init="zoom", zoom=0.5))(image)
    np.testing.assert_allclose(np.asarray(out["theta"])[0], [[0.5, 0, 0], [0, 0.5, 0]])
    np.testing.assert_allclose(np.asarray(out["transformed"]), 1.0, atol=1e-6)


def test_fit_step_trains_the_localisation_network(batch):
    images, labels = batch
    model = STN(TINY)
    model(images)
    localisation = weights_of(model.localisation)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(images, labels, batch_size=6, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and "accuracy" in history
    after = weights_of(model.localisation)
    # The affine layer's weights leave zero: the gradient passed through the sampler.
    assert any(np.any(a != b) for a, b in zip(localisation, after))
    theta = np.asarray(model(images)["theta"])
    assert not np.allclose(theta, [[1, 0, 0], [0, 1, 0]])


def test_save_and_reload_give_identical_outputs(batch, tmp_path):
    images, labels = batch
    model = STN(dataclasses.replace(TINY, output_size=(10, 14)))
    model.compile(optimizer="adam")
    model.fit(images, labels, batch_size=6, epochs=1, verbose=0)
    path = tmp_path / "stn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, STN) and loaded.config == model.config
    out, again = model(images), loaded(images)
    for key in ("logits", "theta", "transformed"):
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(again[key]))


def test_same_seed_same_model(batch):
    images, _ = batch
    a, b = STN(TINY), STN(TINY)
    c = STN(dataclasses.replace(TINY, seed=2))
    np.testing.assert_array_equal(np.asarray(a(images)["logits"]), np.asarray(b(images)["logits"]))
    assert not np.array_equal(np.asarray(a(images)["logits"]), np.asarray(c(images)["logits"]))


def test_config_validation():
    with pytest.raises(ValueError):
        STNConfig(init="rotate")
    assert STNConfig(output_size=[60, 60]).output_size == (60, 60)
    with pytest.raises(ValueError, match="with the modern classifier, 'columns'"):
        STNConfig(cls_pool="columns")  # the convnet classifier has no frames
    with pytest.raises(ValueError, match="cls_rnn reads frames"):
        STNConfig(classifier="modern", cls_rnn=8)
    assert STN.makes_frames(STNConfig(classifier="modern", cls_pool="columns")) and not STN.makes_frames(STNConfig())


def test_presets_build():
    from visatt_models import registry

    spec = registry.get_model_spec("stn")
    assert registry.make_config(spec, preset="zoom-60") == STNConfig(init="zoom", zoom=0.5, output_size=(30, 30),
                                                                     dropout=0.5)
    for preset, side, out_side in (("zoom-100", 100, 50), ("zoom-60", 60, 30)):
        out = STN(registry.make_config(spec, preset=preset))(np.zeros((1, side, side, 1), np.uint8))
        assert tuple(out["transformed"].shape) == (1, out_side, out_side, 1)
        np.testing.assert_allclose(np.asarray(out["theta"])[0], [[0.5, 0, 0], [0, 0.5, 0]])
    assert registry.make_config(spec, preset="identity") == STNConfig()
