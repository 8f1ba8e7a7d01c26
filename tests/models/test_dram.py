"""DRAM: the context reaches only r2, the reward and its truncation, REINFORCE vs cross-entropy,
end-of-sequence handling, Monte-Carlo and forward-backward combination, runs through the CLIs.

Shapes, one fit step, save/reload and seeding on every task are in test_tasks.py."""

import dataclasses
import json

import keras
import numpy as np
import pytest
from PIL import Image

from pipelines.build import build_dataset
from stores import run, tiny_store
from visatt_models.cli import eval_main, predict_main, train_main
from visatt_models.dram import DRAM, DRAMConfig
from visatt_models.evaluate import combine_forward_backward, mc_log_probs, sequence_log_prob
from visatt_models.tasks import BLANK, DigitTask, SequenceTask, decode_numpy, log_softmax

B = BLANK
TINY = DRAMConfig(glimpses_per_digit=2, patch_size=6, scales=2, conv_filters=(4, 4), conv_kernels=(3, 3), glimpse_size=16,
                  lstm_units=16, classifier_hidden=16, context_size=8, context_filters=(4,), context_kernels=(3,), seed=1)
SMALL = ["--model", "dram", "--set", "patch_size=6", "--set", "conv_filters=4",
         "--set", "conv_kernels=3", "--set", "glimpse_size=8", "--set", "lstm_units=8", "--set", "classifier_hidden=8",
         "--set", "context_filters=4", "--set", "context_kernels=3", "--verbose", "0"]


def sequences(n=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)
    labels = np.full((n, 5), B, np.uint8)
    for i, length in enumerate(rng.integers(1, 6, n)):
        labels[i, :length] = rng.integers(0, 10, length)
    return images, labels


def weights_of(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


def changed(before, after):
    return any(np.any(a != b) for a, b in zip(before, after))


def test_emissions_and_steps():
    model = DRAM(TINY, SequenceTask())
    out = model(sequences()[0])
    assert model.emissions == 6 and model.steps == 12  # 5 digits + end of sequence, 2 glimpses each
    assert tuple(out["digit_logits"].shape) == (8, 6, 11) and tuple(out["locations"].shape) == (8, 12, 2)
    assert tuple(out["log_pi"].shape) == tuple(out["baseline"].shape) == (8, 12)
    digit = DRAM(TINY, DigitTask())(sequences()[0])
    assert tuple(digit["logits"].shape) == (8, 10) and tuple(digit["locations"].shape) == (8, 2, 2)
    pairs = DRAM(dataclasses.replace(TINY, emissions=3), SequenceTask())(sequences()[0])
    assert tuple(pairs["digit_logits"].shape) == (8, 3, 11)
    with pytest.raises(ValueError, match="independent"):
        DRAM(TINY, SequenceTask(head="length"))
    with pytest.raises(ValueError, match="emission_loop"):
        dataclasses.replace(TINY, emission_loop="while")


@pytest.mark.parametrize("task", [SequenceTask(), DigitTask()], ids=["sequence", "digit"])
def test_the_scanned_loop_gives_the_unrolled_loops_outputs_and_training_step(task):
    """`ops.scan` over the emission groups and the unrolled Python loop (the default) compute the
    same thing: a sampled pass, a deterministic one, one at forced locations, and the gradient
    step (plain SGD at lr 1, so the weight change is the gradient). On TensorFlow, XLA (Keras'
    default on a GPU) is turned off, even when asked for: it has no kernel for the context
    network's antialiased resize, and cannot build the gradient of Keras' TensorFlow scan."""
    images, labels = sequences()
    if task.kind == "digit":
        labels = labels[:, 0] % 10
    models = [DRAM(dataclasses.replace(TINY, emission_loop=loop), task) for loop in ("scan", "unrolled")]
    forced = np.random.default_rng(2).uniform(-0.8, 0.8, (8, models[0].steps, 2)).astype(np.float32)
    for kwargs in (dict(training=True), dict(deterministic=True), dict(locations=forced)):
        scanned, unrolled = ({k: keras.ops.convert_to_numpy(v) for k, v in m(images, **kwargs).items()} for m in models)
        assert scanned.keys() == unrolled.keys()
        for key in scanned:
            np.testing.assert_allclose(scanned[key], unrolled[key], rtol=1e-5, atol=1e-6, err_msg=f"{key} {kwargs}")
    before = [weights_of(m) for m in models]
    for model in models:
        model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=True)
        model.train_on_batch(images, labels)
    if keras.backend.backend() == "tensorflow":
        assert not models[0].jit_compile and not models[1].jit_compile
        assert not models[0].supports_jit and not models[0].context_network.supports_jit  # either alone turns it off
    (scan_step, unrolled_step) = ([a - b for a, b in zip(weights_of(m), w)] for m, w in zip(models, before))
    assert any(np.any(d != 0) for d in unrolled_step)
    for a, b, w in zip(scan_step, unrolled_step, models[1].trainable_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=w.path)


@pytest.mark.parametrize("loop", ["unrolled", "scan"])
def test_each_classification_reads_the_glimpses_of_its_group_and_those_before(loop):
    """Step t = k N + j belongs to emission k: moving glimpse t changes emission k (and later
    ones) and leaves the emissions before k as they were."""
    images, _ = sequences()
    model = DRAM(dataclasses.replace(TINY, emission_loop=loop), SequenceTask())  # N = 2 glimpses, P = 6
    fixed = np.random.default_rng(3).uniform(-0.5, 0.5, (8, model.steps, 2)).astype(np.float32)
    base = keras.ops.convert_to_numpy(model(images, locations=fixed)["digit_logits"])
    for t in (2, 3, 7):
        moved = fixed.copy()
        moved[:, t] = -moved[:, t]
        logits = keras.ops.convert_to_numpy(model(images, locations=moved)["digit_logits"])
        k = t // 2
        np.testing.assert_array_equal(logits[:, :k], base[:, :k], err_msg=f"step {t}")
        assert not np.allclose(logits[:, k], base[:, k]), f"step {t} did not reach emission {k}"


def test_where_starts_as_a_pass_through_of_what():
    """g_t = what * where must not vanish at the centre, where glimpse paths start."""
    images, _ = sequences()
    model = DRAM(TINY, SequenceTask())
    model(images)
    net = model.glimpse_network
    x = keras.ops.cast(images, "float32") / 255.0
    centre = np.zeros((8, 2), np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(net.fc_where(centre)), 1.0)
    assert np.abs(keras.ops.convert_to_numpy(net(x, centre))).mean() > 0.1 * np.abs(keras.ops.convert_to_numpy(net(x, centre + 0.5))).mean()


def test_the_context_steers_the_first_glimpse_but_cannot_classify():
    images, _ = sequences()
    model = DRAM(TINY, SequenceTask())
    fixed = np.random.default_rng(1).uniform(-0.5, 0.5, (8, model.steps, 2)).astype(np.float32)
    before = model(images, locations=fixed)
    fc = model.context_network.fc
    fc.kernel.assign(keras.ops.convert_to_numpy(fc.kernel) + 0.5)  # another context
    after = model(images, locations=fixed)
    np.testing.assert_array_equal(np.asarray(before["digit_logits"]), np.asarray(after["digit_logits"]))
    assert not np.allclose(np.asarray(before["means"])[:, 0], np.asarray(after["means"])[:, 0])
    assert not np.allclose(np.asarray(before["baseline"]), np.asarray(after["baseline"]))  # r2 changed


def test_reward_is_right_so_far_and_the_gradient_stops_after_the_first_mistake():
    """3 emissions of 2 glimpses. Sample 0: right, wrong, right -> r = [1, 0, 0], returns [1, 0, 0],
    credited emissions [1, 1, 0]. Sample 1: all right -> r = [1, 1, 1], returns [3, 2, 1]."""
    config = dataclasses.replace(TINY, emissions=3, ce_weight=0.0, baseline_weight=0.0, reinforce_weight=1.0)
    model = DRAM(config, SequenceTask())
    y = np.array([[4, 7, B, B, B], [1, 2, B, B, B]])
    predicted = np.array([[4, 3, B], [1, 2, B]])  # sample 0's second digit is wrong
    digit_logits = np.where(np.arange(11) == predicted[..., None], 5.0, 0.0).astype(np.float32)
    log_pi = np.random.default_rng(2).normal(size=(2, 6)).astype(np.float32)
    baseline = np.random.default_rng(3).uniform(size=(2, 6)).astype(np.float32)
    loss = float(model.compute_loss(y=y, y_pred={"digit_logits": digit_logits, "log_pi": log_pi, "baseline": baseline}))
    returns = np.repeat([[1.0, 0, 0], [3, 2, 1]], 2, axis=1)
    credited = np.repeat([[1.0, 1, 0], [1, 1, 1]], 2, axis=1)
    expected = np.mean(np.sum(-log_pi * (returns - baseline) * credited, axis=1))
    assert loss == pytest.approx(expected, rel=1e-5)
    mse = np.mean(np.sum((baseline - returns) ** 2 * credited, 1) / credited.sum(1))
    assert {m.name: float(m.result()) for m in model.metrics}["baseline_loss"] == pytest.approx(mse, rel=1e-5)


def fit_one_step(model, images, labels):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)  # tiny: tracing would dominate
    model.fit(images, labels, batch_size=len(images), epochs=1, verbose=0, shuffle=False)


def test_reinforce_alone_moves_the_emission_network_and_cross_entropy_alone_does_not():
    images, labels = sequences()
    model = DRAM(dataclasses.replace(TINY, ce_weight=0.0, baseline_weight=0.0, reinforce_weight=1.0), SequenceTask())
    model(images)
    emission, classifier = weights_of(model.emission_network), weights_of(model.classifier)
    fit_one_step(model, images, labels)
    assert changed(emission, weights_of(model.emission_network))
    assert not changed(classifier, weights_of(model.classifier))

    model = DRAM(dataclasses.replace(TINY, reinforce_weight=0.0, baseline_weight=0.0), SequenceTask())
    model(images)
    emission, context, classifier = (weights_of(n) for n in (model.emission_network, model.context_network, model.classifier))
    fit_one_step(model, images, labels)
    assert not changed(emission, weights_of(model.emission_network))
    assert not changed(context, weights_of(model.context_network))  # the context only steers
    assert changed(classifier, weights_of(model.classifier))


def test_a_policy_warm_up_keeps_the_emission_network_still_until_its_step():
    """`policy_warmup_steps=2`: no REINFORCE for two optimizer steps (Adam makes no step on the
    emission network, whose only gradient it is), then it learns; the classifier learns throughout."""
    images, labels = sequences()
    model = DRAM(dataclasses.replace(TINY, policy_warmup_steps=2), SequenceTask())
    model(images)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    start, classifier = weights_of(model.emission_network), weights_of(model.classifier)
    model.fit(images, labels, batch_size=len(images), epochs=2, verbose=0, shuffle=False)  # steps 0 and 1
    assert not changed(start, weights_of(model.emission_network))
    assert changed(classifier, weights_of(model.classifier))
    model.fit(images, labels, batch_size=len(images), epochs=1, verbose=0, shuffle=False)  # step 2
    assert changed(start, weights_of(model.emission_network))
    with pytest.raises(ValueError, match="policy_warmup_steps"):
        dataclasses.replace(TINY, policy_warmup_steps=-1)


def test_a_location_leash_pulls_emissions_past_the_clip_back():
    """The policy that ran into the border on mnist-pairs (README): only the leash trains here."""
    images, labels = sequences()
    model = DRAM(dataclasses.replace(TINY, location_leash=1.0, ce_weight=0.0, reinforce_weight=0.0, baseline_weight=0.0),
                 SequenceTask())
    model(images)
    model.emission_network.fc.bias.assign(np.array([-3.0, 3.0], "float32"))  # every mean far past the clip
    before = np.abs(np.asarray(model(images, deterministic=True)["means"])).mean()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    history = model.fit(images, labels, batch_size=len(images), epochs=20, verbose=0, shuffle=False).history
    after = np.abs(np.asarray(model(images, deterministic=True)["means"])).mean()
    assert before > 1.5 and after < before - 0.2
    assert history["means_outside"][0] > 0.5 and history["leash_loss"][-1] < history["leash_loss"][0]


def test_the_emission_network_draws_with_the_scheduled_std():
    """std_start 0.5 -> std 0.05 over 2 steps: the emissions spread 0.5 at step 0, 0.275 at step 1
    and 0.05 from step 2 on (the step count is RAM's, tested with fits in test_ram.py; set here)."""
    images, _ = sequences(n=64)  # 64 x 12 steps x 2 coordinates
    model = DRAM(dataclasses.replace(TINY, std_start=0.5, std=0.05, std_anneal_steps=2, location_clip=100.0),
                 SequenceTask())
    model(images[:1])
    for step, std in ((0, 0.5), (1, 0.275), (2, 0.05), (5, 0.05)):
        model.policy_steps.assign(step)
        out = model.predict_on_batch(images)  # one compiled function: the std is read at run time
        assert np.std(np.asarray(out["locations"]) - np.asarray(out["means"])) == pytest.approx(std, rel=0.1)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
def test_end_of_sequence_after_the_last_digit(length):
    task = SequenceTask()
    digits = list(range(1, length + 1))
    labels = np.array([digits + [B] * (5 - length)])
    trained_on = np.asarray(keras.ops.convert_to_numpy(task.labels_for(labels, 6)))
    assert trained_on.tolist() == [digits + [B] * (6 - length)]  # emission `length` is end-of-sequence
    emitted = [*digits, B, *([7] * (5 - length))]  # anything after the end is ignored
    decoded = decode_numpy(task, {"digit_logits": np.log(np.where(np.arange(11) == np.array(emitted)[:, None], 0.9, 0.01))[None]})
    assert decoded.tolist() == [digits + [B] * (6 - length)]
    assert task.count(decoded, labels)["sequences_right"] == 1
    backward = SequenceTask(reverse=True)
    assert np.asarray(keras.ops.convert_to_numpy(backward.labels_for(labels, 6))).tolist() == [digits[::-1] + [B] * (6 - length)]


def test_forward_backward_equals_the_hand_computed_combination():
    """Forward reads "12", backward reads "13" (reversed: "31"); the joint log-probabilities of
    both proposals under both models decide."""
    forward, backward = SequenceTask(max_length=2), SequenceTask(max_length=2, reverse=True)

    def lp(rows):  # (P, 11) probabilities per emission -> (1, P, 11) log-probabilities
        return np.log(np.array(rows, np.float64))[None]

    def dist(best, p, second=None, q=0.0):
        row = np.full(11, (1 - p - q) / (11 - 1 - (second is not None)))
        row[best] = p
        if second is not None:
            row[second] = q
        return row

    f = lp([dist(1, 0.9), dist(2, 0.5, 3, 0.4), dist(B, 0.9)])  # "12" (or "13")
    b = lp([dist(3, 0.6, 2, 0.3), dist(1, 0.9), dist(B, 0.9)])  # reads "31" = "13" (or "21" = "12")
    expected_12 = np.log(0.9 * 0.5 * 0.9) + np.log(0.3 * 0.9 * 0.9)
    expected_13 = np.log(0.9 * 0.4 * 0.9) + np.log(0.6 * 0.9 * 0.9)
    for sequence, expected in (([1, 2], expected_12), ([1, 3], expected_13)):
        got = sequence_log_prob(forward, f[0:1], np.array([sequence])) + sequence_log_prob(backward, b[0:1], np.array([sequence]))
        assert got[0] == pytest.approx(expected)
    combined = combine_forward_backward(forward, {"digit_logits": f}, backward, {"digit_logits": b})
    assert expected_13 > expected_12 and combined.tolist() == [[1, 3, B]]  # the backward reading wins
    alone = decode_numpy(forward, {"digit_logits": f})
    assert alone.tolist() == [[1, 2, B]]
    # A sequence longer than the emissions has probability 0.
    assert sequence_log_prob(forward, f, np.array([[1, 2, 3, 4]]))[0] == -np.inf


def test_mc_averages_log_probabilities():
    images, _ = sequences(n=4)
    model = DRAM(dataclasses.replace(TINY, std=0.5), SequenceTask())
    model.compile()
    state = np.asarray(keras.ops.convert_to_numpy(model.seed_generator.state))
    logits = np.asarray(model.predict_on_batch(np.tile(images, (3, 1, 1, 1)))["digit_logits"], np.float64)
    model.seed_generator.state.assign(state)
    expected = log_softmax(logits).reshape(3, 4, 6, 11).mean(axis=0)
    np.testing.assert_allclose(mc_log_probs(model, images, samples=3)["digit_logits"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.single_backend  # DRAM on JAX: test_emissions_and_steps, the MC and REINFORCE tests, test_tasks
def test_dram_run_on_mnist_pairs_draws_glimpses_per_digit(tmp_path):
    store = tiny_store(tmp_path / "pairs.zarr", name="mnist-pairs", limit=32, canvas=84)
    out = tmp_path / "dram"
    run(train_main, ["--store", store, "--out", out, *SMALL, "--set", "glimpses_per_digit=2", "--set", "emissions=3",
                     "--epochs", 1, "--batch-size", 16, "--mc", 0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "dram" and metrics["config"]["emissions"] == 3
    for suffix in ("", "_det"):
        assert 0 <= metrics[f"test_sequence_accuracy{suffix}"] <= 1, suffix
    assert "test_sequence_accuracy_mc" not in metrics  # --mc 0
    with open(out / "log.csv") as f:
        header = f.readline().strip().split(",")
    assert {"ce_loss", "reinforce_loss", "baseline_loss", "val_sequence_accuracy"} <= set(header)
    with Image.open(out / "glimpses.png") as png:
        assert png.size[0] > 240 + 6 * 28  # the image and its 6 glimpses' patches (3 digits x 2)


@pytest.mark.single_backend
def test_svhn_64_sample_forward_backward_through_the_clis(tmp_path, monkeypatch, svhn_sample):
    """The SVHN path on the real sample: build svhn-64, train a left-to-right and a right-to-left
    DRAM for one epoch on 54x54 crops, evaluate their forward-backward reading, predict."""
    monkeypatch.setenv("VISATT_LOCK", str(tmp_path / "datasets.lock"))
    store = build_dataset("svhn-64", tmp_path / "svhn-64.zarr", source="svhn", source_dir=str(svhn_sample), limit=3,
                          val_fraction=0.34, workers=1, progress=False)
    # One glimpse per emission, 4 emissions (the sample's numbers have at most 3 digits): small graphs.
    common = ["--store", store, "--epochs", 1, "--batch-size", 3, "--crop", 54, "--mc", 0, "--no-plots", *SMALL,
              "--set", "glimpses_per_digit=1", "--set", "emissions=4"]
    run(train_main, ["--out", tmp_path / "fwd", *common])
    run(train_main, ["--out", tmp_path / "bwd", "--reverse", *common])
    assert json.loads((tmp_path / "bwd" / "metrics.json").read_text())["task"]["reverse"] is True
    result = json.loads(run(eval_main, ["--run", tmp_path / "fwd", "--backward", tmp_path / "bwd", "--mc", 2]).output)
    combined = result["forward_backward"]
    assert combined["test_samples"] == 3 and combined["mc_samples"] == 2
    for suffix in ("", "_det", "_mc"):
        assert 0 <= combined[f"test_sequence_accuracy{suffix}"] <= 1
    refused = run(eval_main, ["--run", tmp_path / "bwd", "--backward", tmp_path / "fwd"], ok=False)
    assert refused.exit_code == 1 and "right-to-left" in refused.output
    assert run(predict_main, ["--run", tmp_path / "fwd", svhn_sample / "test" / "2.png"]).output.count("\t") == 1
