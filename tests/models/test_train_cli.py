"""visatt-train / visatt-eval end to end on tiny stores: runs, resume, refusals, outputs."""

import csv
import json
import math
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from stores import run, tiny_store
from visatt_models.cli import eval_main, train_main
from visatt_models.data import Split, open_store
from visatt_models.runs import RunFolder


def load_run_spec(out):
    return RunFolder(out).load_spec()

# Small and fast, with dropout (its random state must survive a resume).
CNN = ["--model", "cnn", "--set", "widths=4,8", "--set", "dense=16", "--batch-size", "16", "--verbose", "0"]
TINY_RAM = ["--set", "glimpses=2", "--set", "patch_size=6", "--set", "scales=2", "--set", "core_size=16",
            "--set", "glimpse_hidden=8", "--set", "location_hidden=8", "--set", "glimpse_size=16"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("stores") / "cluttered.zarr", limit=64, canvas=40)


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    """Same shape, another dataset (different name and recipe)."""
    return tiny_store(tmp_path_factory.mktemp("stores") / "translated.zarr", name="mnist-translated", limit=64, canvas=40)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cnn_run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cnn"
    run(train_main, ["--store", store, "--out", out, "--epochs", 3, "--limit", 48, *CNN])
    return out


def test_metrics_json_reports_the_run(cnn_run, store):
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    info = open_store(store)
    assert metrics["dataset"] == info.dataset == "mnist-cluttered"
    assert metrics["recipe_digest"] == info.recipe_digest and metrics["dataset_version"] == info.version
    assert metrics["model"] == "cnn" and metrics["config"]["widths"] == [4, 8]
    assert metrics["task"] == {"kind": "digit", "num_classes": 10} and metrics["best_val_metric"] == "accuracy"
    assert metrics["seed"] == 0 and metrics["epochs"] == metrics["epochs_completed"] == 3
    assert metrics["split_sizes"] == {"train": 48, "val": 48, "test": 48} and metrics["test_samples"] == 48
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_error"] == pytest.approx(1 - metrics["test_accuracy"])
    assert len(metrics["train_images_per_s_per_epoch"]) == 3 and metrics["sessions"] == [{"backend": keras.backend.backend(), "devices": 1, "first_epoch": 1}]
    assert metrics["train_images_per_s"] == np.median(metrics["train_images_per_s_per_epoch"][1:]) > 0  # epoch 1 compiles
    assert metrics["backend"] == keras.backend.backend() and metrics["wall_time_s"] > 0
    assert {"hostname", "platform", "cpu_count", "python", "keras", "devices"} <= set(metrics["machine"])
    assert "test_accuracy_mc" not in metrics  # the CNN has no location samples
    assert metrics["store_digests"]["test/images"] == info.digests["test/images"]


def test_test_accuracy_is_that_of_the_best_val_checkpoint(cnn_run, store):
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    log = read_log(cnn_run / "log.csv")
    best = max(range(len(log)), key=lambda i: (float(log[i]["val_accuracy"]), -i)) + 1
    assert metrics["best_epoch"] == best and metrics["checkpoint"] == f"checkpoints/best-epoch-{best:04d}.weights.h5"
    model = load_run_spec(cnn_run).build_model()
    model.load_weights(cnn_run / metrics["checkpoint"])
    images, labels = Split(open_store(store), "test", limit=48).arrays
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(images)["logits"])
    assert metrics["test_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_log_tensorboard_checkpoints_and_pngs(cnn_run):
    log = read_log(cnn_run / "log.csv")
    assert [row["epoch"] for row in log] == ["1", "2", "3"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "train_images_per_s", "epoch_seconds", "lr"} <= set(log[0])
    assert all(math.isfinite(float(row["loss"])) for row in log)
    assert list((cnn_run / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = sorted(p.name for p in (cnn_run / "checkpoints").iterdir())
    # the last epoch's, the one before it (the fallback of --resume) and the best one, no more
    assert "last-epoch-0003.keras" in checkpoints and "last-epoch-0002.keras" in checkpoints and len(checkpoints) <= 3
    with Image.open(cnn_run / "learning_curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
        assert len(png.convert("RGB").getcolors(1 << 16)) > 2  # something was drawn


def test_resume_continues_exactly(cnn_run, store, tmp_path):
    """1 epoch, then resumed to 3: every logged figure equals the uninterrupted 3-epoch run's."""
    out = tmp_path / "resumed"
    run(train_main, ["--store", store, "--out", out, "--epochs", 1, "--limit", 48, *CNN])
    with open(out / "log.csv", "a") as f:  # a row of an epoch killed before its checkpoint
        f.write("2,0.5,9.9,0.5,9.9,1,1,0.001\n")
    result = run(train_main, ["--out", out, "--resume", "--epochs", 3, "--verbose", 0])
    assert json.loads(result.output.strip().splitlines()[-1])["test_accuracy"] >= 0
    straight, resumed = read_log(cnn_run / "log.csv"), read_log(out / "log.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"]
    timing = {"train_images_per_s", "epoch_seconds"}
    for a, b in zip(straight, resumed):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    a = json.loads((cnn_run / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert (b["test_accuracy"], b["best_epoch"], b["best_val"]) == (a["test_accuracy"], a["best_epoch"], a["best_val"])
    assert [s["first_epoch"] for s in b["sessions"]] == [1, 2]
    assert b["train_images_per_s"] == pytest.approx(np.median(b["train_images_per_s_per_epoch"][2:]))  # epoch 3 did not compile
    # Resuming a complete run does nothing; changing what defines the run is refused.
    assert run(train_main, ["--out", out, "--resume", "--epochs", 3]).output == result.output
    refused = run(train_main, ["--out", out, "--resume", "--epochs", 4, "--lr", 0.1], ok=False)
    assert refused.exit_code == 1 and "cannot change lr" in refused.output
    refused = run(train_main, ["--out", out, "--resume", "--epochs", 1], ok=False)
    assert refused.exit_code == 1 and "would shorten it" in refused.output
    assert load_run_spec(out).train.epochs == 3
    refused = run(train_main, ["--out", out, "--resume", "--set", "dense=32"], ok=False)
    assert refused.exit_code == 1 and "changes the recorded model config" in refused.output


@pytest.mark.single_backend  # 1 min; the schedule is Keras', the resume machinery is tested on both backends
def test_resume_mid_schedule_gives_the_learning_rates_of_an_uninterrupted_run(store, tmp_path):
    """A cosine run with warm-up, killed mid-run and resumed, logs what the uninterrupted run
    logs; raising --epochs later re-plans the cosine over the new total."""
    schedule = ["--schedule", "cosine", "--warmup-epochs", 1, "--final-lr-fraction", 0.5, "--global-clipnorm", 1.0,
                "--limit", 48, "--lr", 0.01, "--no-plots", "--epochs", 3, *CNN, "--batch-size", 1]  # 48 steps/epoch
    run(train_main, ["--store", store, "--out", tmp_path / "straight", *schedule])
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from visatt_models.cli import train_main; train_main()",
           *map(str, ["--store", store, "--out", killed, *schedule])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    state = killed / "state.json"
    while time.time() < deadline and proc.poll() is None and not (
            state.exists() and json.loads(state.read_text())["epochs_completed"] >= 1):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    completed = json.loads(state.read_text())["epochs_completed"]
    assert 1 <= completed < 3  # killed mid-schedule
    run(train_main, ["--out", killed, "--resume", "--verbose", 0])
    straight, resumed = read_log(tmp_path / "straight" / "log.csv"), read_log(killed / "log.csv")
    timing = {"train_images_per_s", "epoch_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in straight] == \
           [{k: v for k, v in r.items() if k not in timing} for r in resumed]
    # the lr logged after epoch e is the schedule's at step 48 e: warm-up in epoch 1, then the cosine
    cosine = lambda done, total: 0.01 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * done / total)))
    assert [float(r["lr"]) for r in resumed] == pytest.approx([cosine(0, 2), cosine(1, 2), cosine(2, 2)], rel=1e-5)
    run(train_main, ["--out", killed, "--resume", "--epochs", 5, "--verbose", 0])
    assert float(read_log(killed / "log.csv")[3]["lr"]) == pytest.approx(cosine(3, 4), rel=1e-5)
    assert load_run_spec(killed).train.global_clipnorm == 1.0


@pytest.mark.single_backend  # TensorFlow's start-up chatter; the backend is the subprocess's
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])  # under JAX, seeding imports TensorFlow when installed
def test_the_command_prints_a_line_per_epoch_to_a_pipe_and_keeps_tensorflow_start_up_logs_out(store, tmp_path, backend):
    quiet = [a for a in CNN if a not in ("--verbose", "0")]
    cmd = [sys.executable, "-c", "from visatt_models.cli import train_main; train_main()",
           *map(str, ["--store", store, "--out", tmp_path / "r", "--epochs", 2, "--limit", 48, "--no-plots", *quiet])]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | {"KERAS_BACKEND": backend}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Epoch 1/2" in done.stdout and "Epoch 2/2" in done.stdout and "\r" not in done.stdout  # not a progress bar
    assert json.loads(done.stdout.strip().splitlines()[-1])["test_samples"] == 48
    for chatter in ("cuda", "absl", "oneDNN", "cuInit"):
        assert chatter not in done.stderr, done.stderr


@pytest.mark.single_backend  # the backend is the subprocess's
def test_under_jax_a_tensorflow_that_does_not_import_is_left_alone(tmp_path):
    """Keras seeds TensorFlow only when it imports; the quiet start-up must not require it either."""
    broken = tmp_path / "site" / "tensorflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken TensorFlow install')\n")
    env = os.environ | {"KERAS_BACKEND": "jax", "PYTHONPATH": str(tmp_path / "site")}
    code = "from visatt_models.cli import _import_training; import keras; _import_training(); keras.utils.set_random_seed(0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.single_backend  # run-folder and CLI logic; the JAX pass checks resume exactness
def test_a_time_limit_ends_the_session_after_an_epoch_and_resume_finishes_the_run(store, tmp_path):
    out = tmp_path / "limited"
    run(train_main, ["--store", store, "--out", out, "--epochs", 3, "--limit", 48, "--no-plots", "--time-limit", 1e-6, *CNN])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["epochs_completed"], metrics["epochs"]) == (1, 3) and 0 <= metrics["test_accuracy"] <= 1
    run(train_main, ["--out", out, "--resume", "--verbose", 0])
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 3


@pytest.mark.single_backend  # run-folder and CLI logic; the JAX pass checks resume exactness
def test_training_refuses_a_damaged_store_in_one_line_and_starts_no_run(store, tmp_path):
    import shutil

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    chunk = sorted(f for f in (damaged / "train" / "images" / "c").rglob("*") if f.is_file())[0]
    chunk.unlink()  # zarr would read zeros
    result = run(train_main, ["--store", damaged, "--out", tmp_path / "r", *CNN], ok=False)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "train/images does not match its recorded digest" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.single_backend  # the TensorFlow path wraps what a PyDataset raises; the JAX pass runs the reader tests
def test_a_streamed_damaged_store_stops_training_in_one_line_when_its_first_pass_completes(tmp_path):
    """A whole streamed split is checked while the first epoch reads it (no second pass): the
    damage ends the run with the reader's one-line error, before any epoch is committed."""
    import shutil

    big = tiny_store(tmp_path / "big.zarr", limit=2100, canvas=28, clutter_count=0)  # 3 chunks of up to 1,000
    damaged = shutil.copytree(big, tmp_path / "damaged.zarr")
    sorted(f for f in (damaged / "train" / "images" / "c").rglob("*") if f.is_file())[1].unlink()
    result = run(train_main, ["--store", damaged, "--out", tmp_path / "r", "--memory-limit-mb", 1, "--epochs", 1, *CNN],
                 ok=False)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ") and "train/images does not match its recorded digest" in result.output
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


@pytest.mark.single_backend  # run-folder and CLI logic; the JAX pass checks resume exactness
def test_resume_falls_back_past_a_truncated_last_checkpoint_and_eval_names_a_damaged_best(cnn_run, store, tmp_path):
    out = tmp_path / "r"
    run(train_main, ["--store", store, "--out", out, "--epochs", 2, "--limit", 48, *CNN])
    state = json.loads((out / "state.json").read_text())
    last = out / state["last_checkpoint"]
    last.write_bytes(last.read_bytes()[:100])  # truncated
    result = run(train_main, ["--out", out, "--resume", "--epochs", 3, "--verbose", 0])
    assert f"{last}: unreadable checkpoint" in result.output and "resuming from epoch 1" in result.output
    timing = {"train_images_per_s", "epoch_seconds"}
    straight, resumed = read_log(cnn_run / "log.csv"), read_log(out / "log.csv")
    assert [{k: v for k, v in r.items() if k not in timing} for r in straight] == \
           [{k: v for k, v in r.items() if k not in timing} for r in resumed]
    best = out / json.loads((out / "state.json").read_text())["best_checkpoint"]
    best.write_bytes(b"")
    refused = run(eval_main, ["--run", out], ok=False)
    assert refused.exit_code == 1 and refused.output == f"Error: {best}: unreadable checkpoint" + refused.output.split("unreadable checkpoint", 1)[1]
    assert refused.output.count("\n") == 1
    best.unlink()
    refused = run(eval_main, ["--run", out], ok=False)
    assert refused.output == f"Error: {best}: checkpoint missing\n"


@pytest.mark.single_backend  # run-folder and CLI logic; the JAX pass checks resume exactness
def test_a_run_folder_that_cannot_be_made_is_a_one_line_error(store, tmp_path):
    (tmp_path / "file").write_text("in the way")
    result = run(train_main, ["--store", store, "--out", tmp_path / "file" / "run", *CNN], ok=False)
    assert result.exit_code == 1 and result.output == f"Error: {tmp_path / 'file' / 'run'}: Not a directory\n"


def test_the_trainer_installs_no_per_batch_callback():
    """A callback overriding on_(train_)batch_end makes Keras sync with the device after every step."""
    from visatt_models.train import RunRecorder

    for hook in ("on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end"):
        assert getattr(RunRecorder, hook) is getattr(keras.callbacks.Callback, hook), hook


def test_folder_rules(store, other_store, tmp_path):
    out = tmp_path / "run"
    args = ["--store", store, "--out", out, "--epochs", 1, "--limit", 16, "--no-plots", *CNN]
    run(train_main, args)
    refused = run(train_main, args, ok=False)
    assert refused.exit_code == 1 and "holds a run" in refused.output and "--overwrite" in refused.output
    run(train_main, [*args, "--overwrite"])
    assert not (out / "learning_curves.png").exists()
    other = run(train_main, ["--store", other_store, "--out", out, "--resume"], ok=False)
    assert other.exit_code == 1 and "holds mnist-translated" in other.output
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):
        refused = run(train_main, ["--store", store, "--out", stranger, *flags, *CNN], ok=False)
        assert refused.exit_code == 1 and "not a run folder" in refused.output
    assert (stranger / "notes.txt").read_text() == "mine"
    refused = run(train_main, ["--out", tmp_path / "empty", "--resume"], ok=False)
    assert refused.exit_code == 1 and "no run here" in refused.output


def test_bad_options_are_errors(store, tmp_path):
    out = tmp_path / "bad"
    assert run(train_main, ["--store", store, "--out", out, "--bogus", 1], ok=False).exit_code == 2
    bad = run(train_main, ["--store", store, "--out", out, "--set", "widths=4,x"], ok=False)
    assert bad.exit_code == 1 and "expected an integer" in bad.output
    bad = run(train_main, ["--store", store, "--out", out, "--set", "glimpses=4"], ok=False)
    assert "unknown key 'glimpses'" in bad.output
    bad = run(train_main, ["--store", store, "--out", out, "--preset", "paper-100"], ok=False)
    assert "unknown preset 'paper-100' for model 'cnn'" in bad.output
    assert run(train_main, ["--out", out, "--resume", "--overwrite"], ok=False).exit_code == 2
    for option, value in (("--lr", "inf"), ("--weight-decay", "nan"), ("--momentum", "nan"), ("--time-limit", "inf")):
        bad = run(train_main, ["--store", store, "--out", out, option, value], ok=False)  # nan and inf pass the bounds
        assert bad.exit_code == 2 and f"{value} is not a finite number" in bad.output and option in bad.output
    bad = run(train_main, ["--store", store, "--out", out, "--set", "dropout=nan"], ok=False)
    assert bad.exit_code == 1 and "dropout='nan': expected a finite number" in bad.output
    assert not out.exists()
    assert "--resume" in run(train_main, ["--help"]).output and "--force" in run(eval_main, ["--help"]).output


def test_a_shifted_run_records_its_shift_and_trains_on_other_images(cnn_run, store, tmp_path):
    out = tmp_path / "shifted"
    run(train_main, ["--store", store, "--out", out, "--epochs", 1, "--limit", 48, "--shift", 2, *CNN])
    assert load_run_spec(out).train.shift == 2
    shifted, plain = read_log(out / "log.csv")[0], read_log(cnn_run / "log.csv")[0]
    assert shifted["loss"] != plain["loss"] and shifted["val_loss"] != plain["val_loss"]
    model = load_run_spec(out).build_model()  # validation saw the val images as they are
    model.load_weights(out / json.loads((out / "metrics.json").read_text())["checkpoint"])
    model.compile(loss=None)
    images, labels = Split(open_store(store), "val", limit=48).arrays
    unshifted = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    assert float(shifted["val_loss"]) == pytest.approx(unshifted["loss"], rel=1e-5)
    refused = run(train_main, ["--out", out, "--resume", "--epochs", 2, "--shift", 3], ok=False)
    assert refused.exit_code == 1 and "cannot change shift" in refused.output
    bad = run(train_main, ["--store", store, "--out", tmp_path / "bad", "--shift", 40, *CNN], ok=False)
    assert bad.exit_code == 1 and "shift 40 must be in 0..39 for 40x40 images" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    kept = tmp_path / "kept"  # --keep-ink reaches the training batches: other images than --shift 2's
    run(train_main, ["--store", store, "--out", kept, "--epochs", 1, "--limit", 48, "--shift", 2, "--keep-ink", *CNN])
    assert load_run_spec(kept).train.shift_keep_ink and load_run_spec(kept).train.shift == 2
    floored = tmp_path / "floored"  # --shift-floor is recorded with the run
    run(train_main, ["--store", store, "--out", floored, "--epochs", 1, "--limit", 48, "--shift", 2, "--keep-ink",
                     "--shift-floor", 1, *CNN])
    assert load_run_spec(floored).train.shift_floor == 1
    assert read_log(kept / "log.csv")[0]["loss"] != shifted["loss"]
    bad = run(train_main, ["--store", store, "--out", tmp_path / "bad", "--keep-ink", *CNN], ok=False)
    assert bad.exit_code == 1 and "needs a shift (--shift K, K > 0)" in bad.output and not (tmp_path / "bad").exists()
    refused = run(train_main, ["--out", out, "--resume", "--epochs", 2, "--keep-ink"], ok=False)
    assert refused.exit_code == 1 and "cannot change shift_keep_ink" in refused.output


def test_eval_refuses_another_dataset_unless_forced(cnn_run, store, other_store):
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    again = json.loads(run(eval_main, ["--run", cnn_run]).output)
    assert again["test_accuracy"] == metrics["test_accuracy"] and again["same_dataset_as_training"]
    assert again["recipe_digest"] == metrics["recipe_digest"] and again["test_samples"] == 48
    refused = run(eval_main, ["--run", cnn_run, "--store", other_store], ok=False)
    assert refused.exit_code == 1 and "holds mnist-translated" in refused.output and "mnist-cluttered" in refused.output
    forced = json.loads(run(eval_main, ["--run", cnn_run, "--store", other_store, "--force", "--limit", 20]).output)
    assert forced["forced"] and forced["dataset"] == "mnist-translated" and forced["test_samples"] == 20
    assert len(list(cnn_run.glob("eval-*.json"))) == 2


@pytest.mark.single_backend  # RAM on JAX: tests/models/test_ram.py and test_tasks
def test_ram_run_reports_mc_accuracy_and_draws_glimpses(store, tmp_path):
    out = tmp_path / "ram"
    ram = TINY_RAM
    run(train_main, ["--store", store, "--out", out, "--model", "ram", *ram, "--epochs", 1, "--limit", 32,
                     "--batch-size", 16, "--mc", 3, "--verbose", 0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "ram" and metrics["mc_samples"] == 3 and metrics["config"]["glimpses"] == 2
    assert metrics["test_error_mc"] == pytest.approx(1 - metrics["test_accuracy_mc"])
    assert 0 <= metrics["test_accuracy_mc"] <= 1 and metrics["test_samples"] == 32
    assert {"reinforce_loss", "val_accuracy"} <= set(read_log(out / "log.csv")[0])
    with Image.open(out / "glimpses.png") as png:
        assert png.size[0] > 240
    evaluated = json.loads(run(eval_main, ["--run", out, "--mc", 2]).output)
    assert evaluated["mc_samples"] == 2 and "test_accuracy_mc" in evaluated


def test_a_stochastic_model_is_validated_at_its_policy_means(store, tmp_path):
    """The best checkpoint of RAM (and DRAM) is chosen on a deterministic val pass, not on one
    sample of locations: the logged val figures are those of the policy means."""
    from visatt_models.evaluate import deterministic_policy

    out = tmp_path / "ram-val"
    ram = [*TINY_RAM, "--set", "std=0.5"]
    run(train_main, ["--store", store, "--out", out, "--model", "ram", *ram, "--epochs", 1, "--limit", 32,
                     "--batch-size", 16, "--mc", 0, "--verbose", 0, "--no-plots"])
    logged = read_log(out / "log.csv")[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_pass"] == "deterministic"
    assert json.loads((out / "state.json").read_text())["val_pass"] == "deterministic"
    model = load_run_spec(out).build_model()
    model.load_weights(out / metrics["checkpoint"])
    model.compile(loss=None)
    images, labels = Split(open_store(store), "val", limit=32).arrays
    with deterministic_policy(model):
        at_means = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    sampled = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    assert float(logged["val_loss"]) == pytest.approx(at_means["loss"], rel=1e-5)
    assert float(logged["val_accuracy"]) == pytest.approx(at_means["accuracy"])
    assert float(logged["val_loss"]) != pytest.approx(sampled["loss"], rel=1e-3)  # what the test tells apart

    # A run begun before validation at the means (no val_pass in its state) keeps its sampled pass.
    state = json.loads((out / "state.json").read_text())
    del state["val_pass"]
    (out / "state.json").write_text(json.dumps(state))
    run(train_main, ["--out", out, "--resume", "--epochs", 2, "--verbose", 0, "--no-plots"])
    assert json.loads((out / "metrics.json").read_text())["best_val_pass"] == "sampled"
    resumed = keras.models.load_model(out / "checkpoints" / "last-epoch-0002.keras")
    resumed.compile(loss=None)
    with deterministic_policy(resumed):
        at_means = resumed.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    assert float(keras.ops.convert_to_numpy(resumed.sampling)) == 1.0  # the checkpoint samples again
    assert float(read_log(out / "log.csv")[1]["val_loss"]) != pytest.approx(at_means["loss"], rel=1e-3)
    # Validating at the means still draws the noise: training's random stream, and so the second
    # epoch's training figures, are those of an uninterrupted run validated at the means (which
    # also checks that a resumed RAM run trains on the batches of an uninterrupted one).
    again = tmp_path / "ram-val-again"
    run(train_main, ["--store", store, "--out", again, "--model", "ram", *ram, "--epochs", 2, "--limit", 32,
                     "--batch-size", 16, "--mc", 0, "--verbose", 0, "--no-plots"])
    for mixed, deterministic in zip(read_log(out / "log.csv"), read_log(again / "log.csv")):
        assert float(mixed["loss"]) == pytest.approx(float(deterministic["loss"]), rel=1e-5)


def test_stn_run_draws_transforms(store, tmp_path):
    out = tmp_path / "stn"
    stn = ["--set", "loc_filters=4,4", "--set", "loc_dense=8", "--set", "cls_filters=4,8", "--set", "cls_dense=16"]
    run(train_main, ["--store", store, "--out", out, "--model", "stn", *stn, "--epochs", 1, "--limit", 32,
                     "--batch-size", 16, "--verbose", 0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "stn" and metrics["config"]["loc_filters"] == [4, 4]
    with Image.open(out / "transforms.png") as png:
        assert png.size[0] > 2 * 160
