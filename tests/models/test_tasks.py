"""Tasks: losses against hand-computed values, decoding and exact counting on crafted outputs,
and every model on every task (shapes, a fit step, save/reload, seeding). Any backend."""

import dataclasses

import keras
import numpy as np
import pytest

from visatt_models import registry
from visatt_models.evaluate import evaluate, mc_log_probs
from visatt_models.tasks import BLANK, DigitTask, SequenceTask, decode_numpy, log_softmax, task_from_dict, task_to_dict

B = BLANK


def loss_of(task, y, outputs):
    return np.asarray(keras.ops.convert_to_numpy(task.loss(np.asarray(y), {k: np.asarray(v, np.float32) for k, v in outputs.items()})))


def test_digit_loss_is_cross_entropy():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = np.array([0, 1])
    expected = -log_softmax(logits)[[0, 1], y]
    np.testing.assert_allclose(loss_of(DigitTask(3), y, {"logits": logits}), expected, rtol=1e-5)


def test_independent_loss_sums_every_position_blank_included():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11))
    y = np.array([[1, 2, B, B, B], [3, B, B, B, B]])
    lp = log_softmax(logits)
    expected = -np.array([sum(lp[b, i, y[b, i]] for i in range(5)) for b in range(2)])
    np.testing.assert_allclose(loss_of(SequenceTask(), y, {"digit_logits": logits}), expected, rtol=1e-5)
    # A model emitting one more position (DRAM's end-of-sequence step) is scored on a blank there.
    longer = rng.normal(size=(2, 6, 11))
    lp = log_softmax(longer)
    expected = -np.array([sum(lp[b, i, ([*y[b], B])[i]] for i in range(6)) for b in range(2)])
    np.testing.assert_allclose(loss_of(SequenceTask(), y, {"digit_logits": longer}), expected, rtol=1e-5)


def test_length_loss_counts_only_the_present_digits():
    rng = np.random.default_rng(1)
    length_logits, digit_logits = rng.normal(size=(2, 7)), rng.normal(size=(2, 5, 10))
    y = np.array([[4, 0, 7, B, B], [9, B, B, B, B]])
    lp_len, lp_digit = log_softmax(length_logits), log_softmax(digit_logits)
    expected = [-lp_len[0, 3] - lp_digit[0, 0, 4] - lp_digit[0, 1, 0] - lp_digit[0, 2, 7], -lp_len[1, 1] - lp_digit[1, 0, 9]]
    task = SequenceTask(head="length")
    np.testing.assert_allclose(loss_of(task, y, {"length_logits": length_logits, "digit_logits": digit_logits}), expected, rtol=1e-5)
    # Changing the logits of an absent position does not change the loss.
    digit_logits[:, 4] += rng.normal(size=(2, 10)) * 5
    np.testing.assert_allclose(loss_of(task, y, {"length_logits": length_logits, "digit_logits": digit_logits}), expected, rtol=1e-5)


def collapse(path, blank):
    """CTC's collapse of one frame labelling: repeats merged, blanks dropped."""
    out = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
    return tuple(out)


def test_ctc_loss_sums_every_labelling_that_collapses_to_the_label():
    """Against brute force: all 4^5 labellings of 5 frames (3 digits and the blank)."""
    task = SequenceTask(max_length=3, num_classes=3, head="ctc")
    blank = task.blank
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 5, 4)) * 2
    y = np.array([[0, 2, blank], [1, 1, blank], [2, blank, blank], [0, 1, 0]])  # a repeat needs a blank between
    lp = log_softmax(logits)
    paths = np.array(np.meshgrid(*[range(4)] * 5, indexing="ij")).reshape(5, -1).T  # (1024, 5)
    expected = []
    for b in range(4):
        label = tuple(int(c) for c in y[b] if c != blank)
        total = sum(np.exp(lp[b, range(5), path].sum()) for path in paths if collapse(path, blank) == label)
        expected.append(-np.log(total))
    np.testing.assert_allclose(loss_of(task, y, {"ctc_logits": logits}), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="left to right"):  # reversed frames and labels: the same model
        dataclasses.replace(task, reverse=True)


def test_ctc_decoding_collapses_the_best_frame_labels():
    frames = np.array([
        [1, 1, B, 1, 2, 2, B, B, B, B, B, B],  # a repeat kept only across a blank
        [B] * 12,  # no digit
        [3, B, 3, B, 3, B, 3, B, 3, B, 3, 3],  # six digits: one too many, kept as a sixth column
        [B, B, 7, 7, 7, 7, B, B, 0, 0, B, 5],
    ])
    decoded = decode_numpy(SequenceTask(head="ctc"), {"ctc_logits": one_hot_log(frames, 11)})
    assert decoded.tolist() == [[1, 1, 2, B, B, B], [B] * 6, [3] * 6, [7, 0, 5, B, B, B]]
    counts = SequenceTask(head="ctc").count(decoded, np.array([[1, 1, 2, B, B], [4, B, B, B, B], [3] * 5, [7, 0, 5, B, B]]))
    assert counts["sequences_right"] == 2 and counts["lengths_right"] == 2  # six 3s are not five


def one_hot_log(indices, classes, p=0.9):
    """Log-probabilities with probability p on `indices` (any shape), the rest spread evenly."""
    out = np.full((*np.shape(indices), classes), np.log((1 - p) / (classes - 1)))
    np.put_along_axis(out, np.asarray(indices)[..., None], np.log(p), axis=-1)
    return out


def test_independent_decoding_reads_up_to_the_first_blank():
    best = np.array([[1, B, 3, B, B], [7, 2, B, B, B], [B, 4, B, B, B]])
    decoded = decode_numpy(SequenceTask(), {"digit_logits": one_hot_log(best, 11)})
    assert decoded.tolist() == [[1, B, B, B, B], [7, 2, B, B, B], [B, B, B, B, B]]


def test_length_decoding_takes_the_most_probable_sequence():
    task = SequenceTask(head="length")
    lengths = np.log(np.array([[0.01, 0.45, 0.5, 0.01, 0.01, 0.01, 0.01]]))
    digits = one_hot_log(np.array([[6, 8, 1, 1, 1]]), 10, p=0.99)
    assert decode_numpy(task, {"length_logits": lengths, "digit_logits": digits}).tolist() == [[6, 8, B, B, B]]
    # An unsure second digit makes the one-digit reading the most probable sequence although
    # length 2 is the most probable length: log .45 + log .99 > log .5 + log .99 + log .5.
    digits[0, 1] = np.log(np.r_[0.5, np.full(9, 0.5 / 9)])
    assert decode_numpy(task, {"length_logits": lengths, "digit_logits": digits}).tolist() == [[6, B, B, B, B]]
    # "More than five digits" cannot be written in the label layout and is never decoded.
    more = np.log(np.array([[0.01, 0.01, 0.01, 0.01, 0.01, 0.05, 0.9]]))
    assert decode_numpy(task, {"length_logits": more, "digit_logits": digits}).tolist() == [[6, 0, 1, 1, 1]]


def test_sequence_counting_gives_no_partial_credit():
    task = SequenceTask()
    labels = np.array([[1, 2, 3, B, B], [4, 5, B, B, B], [6, B, B, B, B], [7, 8, B, B, B]])
    predictions = np.array([
        [1, 2, 3, B, B],  # right
        [4, 6, B, B, B],  # one wrong digit: wrong
        [6, 1, B, B, B],  # right digit, wrong length: wrong
        [7, B, B, B, B],  # a digit missing: wrong
    ])
    counts = task.count(predictions, labels)
    assert counts == {"samples": 4, "sequences_right": 1, "digits": 8, "digits_right": 6, "lengths_right": 2}
    summary = task.summarise(counts)
    assert summary == {"sequence_accuracy": 0.25, "sequence_error": 0.75, "digit_accuracy": 0.75, "length_accuracy": 0.5}
    # The training metrics compute the same from the same predictions.
    values = task.per_sample(labels, predictions)
    seq, _ = values["sequence_accuracy"]
    digit, present = (np.asarray(keras.ops.convert_to_numpy(v)) for v in values["digit_accuracy"])
    assert np.asarray(keras.ops.convert_to_numpy(seq)).tolist() == [1, 0, 0, 0]
    assert (digit * present).sum() / present.sum() == 0.75
    # Predictions with an extra (end-of-sequence) position compare against blank-padded labels.
    extra = np.concatenate([predictions, np.full((4, 1), B)], axis=1)
    assert task.count(extra, labels) == counts
    assert DigitTask().count(np.array([1, 2, 3]), np.array([1, 2, 4])) == {"samples": 3, "right": 2}


def test_task_dict_round_trip_and_format():
    for task in (DigitTask(), SequenceTask(), SequenceTask(head="length"), SequenceTask(head="ctc")):
        assert task_from_dict(task_to_dict(task)) == task
    assert SequenceTask().format([1, 0, 5, B, B]) == "105" and DigitTask().format(np.uint8(7)) == "7"
    with pytest.raises(ValueError, match="head"):
        SequenceTask(head="beam")


# ---------------------------------------------------------------- every model on every task

TINY = {
    "cnn": ["widths=4,8", "dense=16"],
    "ram": ["glimpses=2", "patch_size=4", "scales=2", "glimpse_hidden=8", "location_hidden=8", "glimpse_size=8", "core_size=8"],
    "stn": ["loc_filters=4", "loc_dense=8", "cls_filters=4,8", "cls_dense=16"],
    "dram": ["glimpses_per_digit=1", "patch_size=4", "conv_filters=4", "conv_kernels=3", "glimpse_size=8", "lstm_units=8",
             "classifier_hidden=8", "context_filters=4", "context_kernels=3"],
}
# The ctc head reads frames of column bands (24 pixels: 12 frames after one stride-2 stage).
FRAMES = {"cnn": ["arch=modern", "pool=columns", "rnn=4"], "stn": ["classifier=modern", "cls_pool=columns", "cls_rnn=4"]}
TASKS = {"digit": DigitTask(), "independent": SequenceTask(), "length": SequenceTask(head="length"),
         "ctc": SequenceTask(head="ctc")}


def data(task, n=8, size=24):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    if task.kind == "digit":
        return images, rng.integers(0, 10, n).astype(np.uint8)
    labels = np.full((n, 5), B, np.uint8)
    for i, length in enumerate(rng.integers(1, 6, n)):
        labels[i, :length] = rng.integers(0, 10, length)
    return images, labels


def make(name, task, seed=0, eager=False):
    keras.utils.set_random_seed(seed)
    spec = registry.get_model_spec(name)
    overrides = TINY[name] + (FRAMES.get(name, []) if getattr(task, "head", None) == "ctc" else [])
    model = spec.model_cls(registry.make_config(spec, overrides=overrides), task)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=eager)
    return model


def outputs(model, images):
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(images).items()}


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_every_model_on_every_task(name, task_name, tmp_path):
    """Eager: compiling nine tiny models would dominate the suite (the compiled paths of every
    model are exercised by its own tests and the CLI runs)."""
    task = TASKS[task_name]
    images, labels = data(task)
    if name == "dram" and task_name == "length":  # one softmax per emission: no length head
        with pytest.raises(ValueError, match="needs the sequence task's 'independent' head"):
            make(name, task)
        return
    if name not in FRAMES and task_name == "ctc":  # one feature vector, no frames
        with pytest.raises(ValueError, match="head"):
            make(name, task)
        return
    model = make(name, task, eager=True)
    out = outputs(model, images)
    for head, shape in task.head_shapes().items():
        if name == "dram" and task.kind == "sequence":  # one more emission: the end of the sequence
            shape = (task.max_length + 1, *shape[1:])
        if shape[0] is None:  # one row per frame
            shape = (12, *shape[1:])
        assert out[head].shape == (8, *shape), head
    initial = model.get_weights()
    logs = model.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    assert set(task.metric_names) <= set(logs) and np.isfinite(logs["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(initial, model.get_weights()))
    # Save and reload: identical outputs, random draws included (RAM samples locations).
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded) is type(model) and loaded.config == model.config and loaded.task == task
    # Every layer of a loaded model is built: an unbuilt one makes Keras' fit take a batch from the
    # data to build it, which the trainer's endless prefetching batches do not give back.
    assert not [layer.name for layer in loaded._flatten_layers() if not layer.built]
    for _ in range(2):
        a, b = outputs(model, images), outputs(loaded, images)
        for head in task.head_shapes():
            np.testing.assert_array_equal(a[head], b[head])
    # Same seed, same model.
    again = make(name, task, eager=True)
    again(images)
    for a, b in zip(initial, again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mc_evaluation_of_a_sequence_task_averages_probabilities_per_head():
    task = SequenceTask(head="length")
    images, _ = data(task)
    model = make("ram", task)
    model = type(model)(dataclasses.replace(model.config, std=1e-6), task)  # every draw at the means
    averaged = mc_log_probs(model, images, samples=4)
    single = {k: np.asarray(keras.ops.convert_to_numpy(v), np.float64) for k, v in model(images, deterministic=True).items()}
    for head in task.head_shapes():
        np.testing.assert_allclose(averaged[head], log_softmax(single[head]), atol=1e-4)


def test_evaluate_counts_exactly_with_a_short_last_batch(tmp_path):
    """11 test samples in batches of 4 (4 + 4 + 3): the result is the hand count over all 11."""
    from stores import tiny_store
    from visatt_models.data import Split, open_store

    store = tiny_store(tmp_path / "seq.zarr", name="mnist-sequences", limit=11, canvas=24)
    info = open_store(store)
    model = make("cnn", SequenceTask())
    split = Split(info, "test")
    images, labels = split.arrays
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(images)["digit_logits"])
    predicted = decode_numpy(model.task, {"digit_logits": logits})
    right = int(np.all(predicted == labels, axis=1).sum())
    result = evaluate(model, split, batch_size=4)
    assert result["test_samples"] == 11 and result["test_sequence_accuracy"] == right / 11
    present = labels != B
    assert result["test_digit_accuracy"] == ((predicted == labels) & present).sum() / present.sum()
