"""Mixed precision (`--precision mixed_bfloat16`): bfloat16 compute on float32 weights for the
CNN and STN, float32 heads and sampling grid, recorded in the run and the saved model."""

import csv
import json

import keras
import numpy as np
import pytest

import visatt_models
from stores import run, tiny_store
from visatt_models import load_run, registry
from visatt_models.cli import eval_main, train_main
from visatt_models.config import TrainConfig
from visatt_models.tasks import DigitTask, SequenceTask

MIXED = "mixed_bfloat16"
CNN = ["--model", "cnn", "--preset", "modern-seq-ctc", "--head", "ctc", "--set", "widths=4,8,8,8", "--set", "rnn=8",
       "--verbose", "0"]


def build(name, preset, task, dtype, **fields):
    spec = registry.get_model_spec(name)
    keras.utils.set_random_seed(0)
    config = registry.make_config(spec, preset=preset, **fields)
    return spec.model_cls(config, task, dtype=dtype)


def images(n=4, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def layer_policies(model) -> dict[str, set[str]]:
    """Dtype policy name -> the layer classes under it, over every layer of `model`."""
    out = {}
    for layer in model._flatten_layers(include_self=False):
        out.setdefault(layer.dtype_policy.name, set()).add(type(layer).__name__)
    return out


@pytest.mark.parametrize("name, preset, task", [
    ("cnn", "modern-seq-ctc", SequenceTask(head="ctc")),
    ("cnn", "modern-seq", SequenceTask(head="length")),
    ("cnn", "seed", DigitTask()),
    ("stn", "st-cnn-ctc", SequenceTask(head="ctc")),
    ("stn", None, DigitTask()),  # the "convnet" classifier
])
def test_a_mixed_model_computes_in_bfloat16_with_float32_weights_and_heads(name, preset, task):
    model = build(name, preset, task, MIXED)
    outputs = model(images())
    assert keras.config.dtype_policy().name == "float32"  # the scope is left as it was
    policies = layer_policies(model)
    head = model.classifier if name == "cnn" else model.head
    float32 = {layer.name for layer in model._flatten_layers(include_self=False) if layer.dtype_policy.name == "float32"}
    assert float32 == {head.name, *task.head_shapes()} | ({"loc_affine"} if name == "stn" else set())
    assert {"Conv2D", "Dense" if preset in ("seed", None) else "BasicBlock"} <= policies[MIXED]
    assert {"LSTM", "Bidirectional"} <= policies[MIXED] or "ctc" not in str(preset)
    assert all(v.dtype == "float32" for v in model.weights if "seed_generator" not in v.path)
    for head in task.head_shapes():
        assert keras.backend.standardize_dtype(outputs[head].dtype) == "float32"
    if name == "stn":  # the grid and the sampled image in float32
        assert keras.backend.standardize_dtype(outputs["theta"].dtype) == "float32"
        assert keras.backend.standardize_dtype(outputs["transformed"].dtype) == "float32"
        assert model.localisation.affine.dtype_policy.name == "float32"


def test_the_mixed_model_is_the_float32_model_to_bfloat16_rounding():
    full = build("cnn", "modern-seq-ctc", SequenceTask(head="ctc"), "float32")
    mixed = build("cnn", "modern-seq-ctc", SequenceTask(head="ctc"), MIXED)
    x = images(8)
    reference = np.asarray(full(x)["ctc_logits"])
    mixed(x)
    mixed.set_weights(full.get_weights())
    logits = np.asarray(mixed(x)["ctc_logits"])
    assert not np.array_equal(logits, reference)  # it does compute in bfloat16 ...
    np.testing.assert_allclose(logits, reference, atol=0.05 * np.abs(reference).max())  # ... the same function


def test_a_saved_mixed_model_reloads_mixed_with_identical_outputs(tmp_path):
    model = build("stn", "st-cnn-ctc", SequenceTask(head="ctc"), MIXED)
    x = images()
    before = model(x)
    model.save(tmp_path / "m.keras")
    again = visatt_models.load_model(tmp_path / "m.keras")
    assert again.dtype_policy.name == MIXED and layer_policies(again) == layer_policies(model)
    after = again(x)
    for key in ("ctc_logits", "theta", "transformed"):
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]))
    older = {k: v for k, v in again.get_config().items() if k != "dtype"}  # saved before the field existed
    assert set(layer_policies(type(again).from_config(older))) == {"float32"}


def test_the_scope_is_left_on_errors_and_a_global_mixed_policy_is_refused_by_ram():
    from visatt_models.base import policy_scope
    from visatt_models.ram import RAM

    with pytest.raises(ValueError, match="RAM trains in float32 only"):
        with policy_scope(MIXED):
            assert keras.config.dtype_policy().name == MIXED
            RAM()
    assert keras.config.dtype_policy().name == "float32"


def test_ram_and_dram_refuse_mixed_precision_and_config_checks_the_name():
    for name in ("ram", "dram"):
        spec = registry.get_model_spec(name)
        with pytest.raises(ValueError, match=f"trains in float32 only .*{MIXED} is for cnn and stn"):
            spec.model_cls(registry.make_config(spec), DigitTask(), dtype=MIXED)
    with pytest.raises(ValueError, match="precision must be one of float32, mixed_bfloat16, got 'float16'"):
        TrainConfig(precision="float16")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("stores") / "sequences.zarr", name="mnist-sequences", limit=64, canvas=40)


@pytest.mark.single_backend  # run-folder and CLI logic; the mixed model itself is tested above on both backends
def test_a_mixed_run_trains_records_its_precision_and_evaluates_mixed(store, tmp_path):
    out, again = tmp_path / "mixed", tmp_path / "again"
    for folder in (out, again):
        run(train_main, ["--store", store, "--out", folder, "--epochs", 1, "--batch-size", 16, "--precision", MIXED,
                         "--no-plots", *CNN])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["precision"] == MIXED
    rows = [next(csv.DictReader((folder / "log.csv").open())) for folder in (out, again)]
    assert np.isfinite(float(rows[0]["loss"]))
    assert rows[0]["loss"] == rows[1]["loss"] and rows[0]["val_loss"] == rows[1]["val_loss"]  # same seed, same run
    model = load_run(out)
    assert model.dtype_policy.name == MIXED
    evaluated = json.loads(run(eval_main, ["--run", out]).output)
    assert evaluated["test_sequence_accuracy"] == metrics["test_sequence_accuracy"]
    refused = run(train_main, ["--out", out, "--resume", "--epochs", 2, "--precision", "float32"], ok=False)
    assert refused.exit_code == 1 and "cannot change precision" in refused.output
    run(train_main, ["--out", out, "--resume", "--epochs", 2])  # resumes mixed, from its .keras checkpoint
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 2
    bad = run(train_main, ["--store", store, "--out", tmp_path / "ram", "--model", "ram", "--precision", MIXED], ok=False)
    assert bad.exit_code == 1 and "trains in float32 only" in bad.output and not (tmp_path / "ram").exists()


@pytest.mark.single_backend  # the script's options and output; the models under each policy are tested above
def test_bench_sequence_times_each_model_under_each_precision():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, root / "benchmarks" / "bench_sequence.py", "--stores", "mnist-sequences",
                           "--models", "cnn:modern-seq-ctc:widths=4,8,8,8;rnn=8", "--precision", "float32",
                           MIXED, "--batch-size", "4", "--warmup", "1", "--steps", "1", "--repeats", "1"],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("mnist-sequences")]
    assert len(lines) == 2, done.stdout
    assert re.search(r"cnn:modern-seq-ctc:widths=4,8,8,8;rnn=8 float32 +[0-9.]+ images/s +1\.00x", lines[0])
    assert re.search(rf"cnn:\S+ {MIXED} +[0-9.]+ images/s +[0-9.]+x cnn:\S+ float32  \(runs [0-9]+-[0-9]+\)$", lines[1])
