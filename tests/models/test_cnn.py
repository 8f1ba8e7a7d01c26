"""CNN baselines on a digit task: shapes, scaling, loss and metric, one fit step, serialisation. Any backend.

The sequence tasks are exercised for every model in test_tasks.py."""

import keras
import numpy as np
import pytest

from visatt_models.cnn import CNN, CNNConfig, apply_layers
from visatt_models.tasks import DigitTask


def batch(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("arch, widths", [("seed", (4, 8)), ("modern", (4, 8, 16))])
def test_logits_shape_and_fit_step(arch, widths):
    keras.utils.set_random_seed(0)
    images, labels = batch()
    model = CNN(CNNConfig(arch=arch, widths=widths, dense=16))
    out = model(images)
    assert set(out) == {"logits"} and tuple(out["logits"].shape) == (6, 10)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    # Two steps: the residual branch's last BN starts at gamma = 0, so its conv gets a
    # gradient only from the second step on.
    logs = model.fit(images, labels, batch_size=3, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "accuracy"} and np.isfinite(logs["loss"][0])
    unchanged = [w.path for a, w in zip(before, model.trainable_weights) if np.allclose(a, keras.ops.convert_to_numpy(w))]
    assert not unchanged, f"weights without a gradient: {unchanged}"


def test_modern_is_translation_robust_shape_free():
    """Global average pooling: the modern CNN accepts any canvas size with the same weights."""
    model = CNN(CNNConfig(arch="modern", widths=(4, 8)))
    assert tuple(model(batch(size=40)[0])["logits"].shape) == (6, 10)
    assert tuple(model(batch(size=28)[0])["logits"].shape) == (6, 10)


def test_loss_is_cross_entropy_of_scaled_input_and_tracks_accuracy():
    keras.utils.set_random_seed(1)
    images, labels = batch(n=8)
    model = CNN(CNNConfig(widths=(4, 8), dense=16))
    logits = keras.ops.convert_to_numpy(model(images)["logits"]).astype(np.float64)
    same = keras.ops.convert_to_numpy(model(images.astype(np.float32))["logits"])  # uint8 and float pixels alike
    np.testing.assert_allclose(logits, same, rtol=1e-5, atol=1e-5)
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    expected = -log_p[np.arange(8), labels].mean()
    model.compile(optimizer="adam", loss=None)
    result = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(expected, rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_dropout_only_in_training():
    keras.utils.set_random_seed(2)
    images, _ = batch()
    model = CNN(CNNConfig(widths=(4, 8), dense=16, dropout=0.5, dense_dropout=0.5))
    a, b = (keras.ops.convert_to_numpy(model(images)["logits"]) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, keras.ops.convert_to_numpy(model(images, training=True)["logits"]))


def test_config_validation():
    assert CNNConfig(arch="modern").widths == (32, 64, 128, 256)
    assert CNNConfig().widths == (32, 64)
    assert (CNNConfig().dense, CNNConfig(arch="modern").dense) == (128, 0)  # None resolves per arch
    with pytest.raises(ValueError, match="pool"):
        CNNConfig(arch="modern", pool="max")
    with pytest.raises(ValueError, match="arch"):
        CNNConfig(arch="vgg")
    with pytest.raises(ValueError, match="stem width"):
        CNNConfig(arch="modern", widths=(8,))


@pytest.mark.parametrize("arch", ["seed", "modern"])
def test_save_and_load_round_trip(tmp_path, arch):
    keras.utils.set_random_seed(3)
    images, labels = batch()
    config = CNNConfig(arch=arch, widths=(4, 8, 8)[: 2 if arch == "seed" else 3], dense=16)
    model = CNN(config, DigitTask(num_classes=5))
    model.compile(optimizer="adam", loss=None)
    model.fit(images, labels % 5, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, CNN) and loaded.config == config and loaded.task == DigitTask(num_classes=5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)["logits"]), keras.ops.convert_to_numpy(model(images)["logits"]), rtol=1e-5, atol=1e-6)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1


@pytest.mark.parametrize("arch", ["seed", "modern"])
def test_training_flag_reaches_dropout_and_batch_norm_in_a_stateless_call(arch):
    """JAX's train step runs `stateless_call(..., training=True)`, which calls `call` directly:
    the flag must be passed down explicitly, or dropout and batch norm stay in inference mode."""
    keras.utils.set_random_seed(4)
    images, _ = batch(n=8)
    model = CNN(CNNConfig(arch=arch, widths=(4, 8), dense=16, dropout=0.5))
    model(images)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    outputs = {}
    for training in (False, True):
        out, updated = model.stateless_call(trainable, frozen, images, training=training)
        outputs[training] = keras.ops.convert_to_numpy(out["logits"])
        moved = [v.path for v, a, b in zip(model.non_trainable_variables, frozen, updated)
                 if "moving" in v.path and not np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))]
        bn = [v.path for v in model.non_trainable_variables if "moving" in v.path]
        assert moved == (bn if training else []), f"training={training}: moving statistics updated: {moved}"
    assert not np.allclose(outputs[False], outputs[True])  # dropout (and batch statistics) act in training


def test_the_deep_sequence_preset_relates_pixels_that_modern_seq_cannot():
    """`modern-seq-deep` (README, mnist-pairs): its 7x7 final map on 100x100 has units that see 93
    pixels across, where `modern-seq`'s 13x13 map sees 45: a change at columns 40-43 reaches the
    deep map's first column (centred near pixel 3) but no column of modern-seq's centred more than
    22 pixels away. With every BN scale at 1, as the residual branches start at 0."""
    from visatt_models.registry import get_model_spec, make_config

    spec = get_model_spec("cnn")
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (1, 100, 100, 1)).astype("float32")
    moved = image.copy()
    moved[0, 48:52, 40:44, 0] += 1.0  # columns 40-43
    changed = {}
    for preset, side in (("modern-seq", 13), ("modern-seq-deep", 7)):
        keras.utils.set_random_seed(0)
        model = CNN(make_config(spec, preset=preset))
        model(batch(n=1, size=100)[0])
        for weight in model.weights:  # each residual branch's last BN starts at gamma = 0 (no reach yet)
            if weight.path.endswith("gamma"):
                weight.assign(keras.ops.ones(weight.shape))
        convs = [layer for layer in model.features if not isinstance(layer, (keras.layers.Flatten, keras.layers.Dropout,
                                                                               keras.layers.Dense))]
        maps = [keras.ops.convert_to_numpy(apply_layers(convs, keras.ops.convert_to_tensor(x), False)) for x in (image, moved)]
        assert maps[0].shape[1:3] == (side, side)
        changed[preset] = np.abs(maps[1] - maps[0]).max(axis=(0, 1, 3)) > 0  # per final column
    # modern-seq's receptive field: 45 pixels, its column j centred near pixel 8j + 3: columns 0-1 and
    # 8-12 (centres 3-11 and 67-99, 22 pixels either side) cannot see columns 40-43.
    assert changed["modern-seq"][2:8].all() and not changed["modern-seq"][:2].any() and not changed["modern-seq"][8:].any()
    # The deep map's column j is centred near pixel 16j + 3, with 46 pixels either side: columns 0-5
    # see it, column 6 (centre 99) does not.
    assert changed["modern-seq-deep"][:6].all() and not changed["modern-seq-deep"][6]


def test_column_frames_read_left_to_right_and_the_lstm_gives_each_frame_the_whole_strip():
    """`pool="columns"` (the ctc head): one frame per 4-pixel column band, in order. Without the
    LSTM a frame sees only nearby columns, so a change in the rightmost 8 columns of a 64-pixel
    image leaves the first frames as they were; the bidirectional LSTM carries it to every frame.
    With every BN scale at 1, as the residual branches start at 0."""
    from visatt_models.registry import get_model_spec, make_config
    from visatt_models.tasks import SequenceTask

    spec = get_model_spec("cnn")
    images = batch(n=1, size=64)[0]
    moved = images.copy()
    moved[0, 20:44, 56:64, 0] = 255 - moved[0, 20:44, 56:64, 0]
    changed = {}
    for rnn in (0, 16):
        keras.utils.set_random_seed(0)
        model = CNN(make_config(spec, preset="modern-seq-ctc", overrides=[f"rnn={rnn}"]), SequenceTask(head="ctc"))
        model(images)
        for weight in model.weights:
            if weight.path.endswith("gamma"):
                weight.assign(keras.ops.ones(weight.shape))
        frames = [keras.ops.convert_to_numpy(model(x)["ctc_logits"]) for x in (images, moved)]
        assert frames[0].shape == (1, 16, 11)
        changed[rnn] = np.abs(frames[1] - frames[0]).max(axis=(0, 2)) > 1e-6  # per frame
    assert changed[0][-1] and not changed[0][:4].any()
    assert changed[16].all()


def test_full_resolution_stages_keep_the_maps_twice_as_large_and_the_frames_as_they_were():
    from visatt_models.cnn import BasicBlock
    from visatt_models.tasks import SequenceTask

    images = batch(n=2, size=64)[0]
    maps = {}
    for full in (0, 1):
        config = CNNConfig(arch="modern", widths=(4, 8, 8, 8), pool="columns", rnn=4, full_res_stages=full)
        model = CNN(config, SequenceTask(head="ctc"))
        assert tuple(model(images)["ctc_logits"].shape) == (2, 16, 11)  # one frame per 4-pixel band either way
        blocks = [layer for layer in model.features if isinstance(layer, BasicBlock)]
        assert [b.strides for b in blocks] == ([2, 2, (2, 1)] if full == 0 else [1, 2, 2])
        x = keras.ops.cast(images, "float32") / 255.0
        for layer in model.features[: 1 + len(blocks)]:
            x = layer(x)
        maps[full] = tuple(x.shape)
    assert maps == {0: (2, 8, 16, 8), 1: (2, 16, 16, 8)}  # the final map: twice the rows, the same columns
    # The frame count before any model is built counts the strided stages only.
    two = CNNConfig(arch="modern", widths=(4, 8, 8, 8), pool="columns", full_res_stages=2)
    CNN.check_input(SequenceTask(head="ctc"), two, (64, 18, 1))  # 18 -> 9 frames (one strided stage)
    with pytest.raises(ValueError, match="needs at least 9 frames for 5 digits; 16-pixel-wide images give 8"):
        CNN.check_input(SequenceTask(head="ctc"), two, (64, 16, 1))
    for bad in (3, -1):
        with pytest.raises(ValueError, match="full_res_stages is the modern CNN's: 0 to its stages less one \\(2\\)"):
            CNNConfig(arch="modern", widths=(4, 8, 8, 8), full_res_stages=bad)
    with pytest.raises(ValueError, match="full_res_stages is the modern CNN's"):
        CNNConfig(arch="seed", full_res_stages=1)


def test_column_frames_need_the_ctc_head_and_enough_columns():
    from visatt_models.tasks import SequenceTask

    columns = CNNConfig(arch="modern", widths=(4, 8), pool="columns")
    assert CNN.makes_frames(columns) and not CNN.makes_frames(CNNConfig(arch="modern", pool="flatten"))
    with pytest.raises(ValueError, match="add --head ctc"):
        CNN(columns, SequenceTask())
    with pytest.raises(ValueError, match="set pool=columns"):
        CNN(CNNConfig(arch="modern", widths=(4, 8), pool="flatten"), SequenceTask(head="ctc"))
    with pytest.raises(ValueError, match="modern CNN"):
        CNNConfig(arch="seed", pool="columns")
    with pytest.raises(ValueError, match="needs pool='columns'"):
        CNNConfig(arch="modern", rnn=8)
    # 24 pixels -> 12 frames: enough for 5 digits (9 needed); 16 pixels -> 8 frames: too few.
    model = CNN(columns, SequenceTask(head="ctc"))
    assert tuple(model(batch(n=2, size=24)[0])["ctc_logits"].shape) == (2, 12, 11)
    with pytest.raises(ValueError, match="at least 9 feature frames"):
        CNN(columns, SequenceTask(head="ctc"))(batch(n=2, size=16)[0])
    # The same count before any model is built (visatt-train's check): two stride-2 stages and more
    # halve the width twice, rounding up; 33 pixels still give 9 frames, 32 give 8.
    deep = CNNConfig(arch="modern", widths=(4, 8, 8, 8), pool="columns")
    CNN.check_input(SequenceTask(head="ctc"), deep, (33, 33, 1))
    CNN.check_input(SequenceTask(head="ctc"), columns, (18, 18, 1))
    for config, width in ((deep, 32), (columns, 16)):
        with pytest.raises(ValueError, match=f"needs at least 9 frames for 5 digits; {width}-pixel-wide images give 8"):
            CNN.check_input(SequenceTask(head="ctc"), config, (64, width, 1))


def test_a_column_model_with_height_only_strides_reloads_with_identical_outputs(tmp_path):
    """`modern-seq-ctc`'s shape (stages striding (2, 1), the LSTM, the row mean) at small widths."""
    from visatt_models.registry import get_model_spec, make_config
    from visatt_models.tasks import SequenceTask

    keras.utils.set_random_seed(0)
    config = make_config(get_model_spec("cnn"), preset="modern-seq-ctc", overrides=["widths=4,8,8,8", "rnn=4"])
    model = CNN(config, SequenceTask(head="ctc"))
    images = batch(n=3, size=40)[0]
    expected = keras.ops.convert_to_numpy(model(images)["ctc_logits"])
    assert expected.shape == (3, 10, 11)  # 40 pixels halved twice: 10 frames
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)["ctc_logits"]), expected)
