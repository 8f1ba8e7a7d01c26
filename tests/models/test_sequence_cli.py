"""Multi-digit runs end to end through the CLIs: train, evaluate, predict on image files;
an mnist-sequences store from the embedded sample and SVHN from the real format-1 sample."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipelines.build import build_dataset
from stores import run, tiny_store
from visatt_models import load_run, predict
from visatt_models.cli import eval_main, predict_main, train_main
from visatt_models.data import Split, crop_images, open_store
from visatt_models.evaluate import predictions

CNN = ["--model", "cnn", "--set", "widths=4,8", "--set", "dense=16", "--verbose", "0"]
SEQUENCE_FIELDS = ("test_sequence_accuracy", "test_sequence_error", "test_digit_accuracy", "test_length_accuracy")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("stores") / "sequences.zarr", name="mnist-sequences", limit=64, canvas=40)


@pytest.fixture(scope="module")
def seq_run(store, tmp_path_factory):
    """The Goodfellow head and 36x36 random crops of the 40x40 images."""
    out = tmp_path_factory.mktemp("runs") / "seq"
    run(train_main, ["--store", store, "--out", out, "--epochs", 2, "--batch-size", 16, "--head", "length", "--crop", 36, *CNN])
    return out


def test_sequence_run_reports_sequence_figures(seq_run, store):
    metrics = json.loads((seq_run / "metrics.json").read_text())
    assert metrics["task"] == {"kind": "sequence", "max_length": 5, "num_classes": 10, "head": "length", "reverse": False}
    assert metrics["best_val_metric"] == "sequence_accuracy" and metrics["train"]["crop"] == [36, 36]
    for field in SEQUENCE_FIELDS:
        assert 0 <= metrics[field] <= 1, field
    assert metrics["test_sequence_error"] == pytest.approx(1 - metrics["test_sequence_accuracy"])
    assert "test_accuracy" not in metrics and metrics["test_samples"] == 64
    with open(seq_run / "log.csv") as f:
        header = f.readline().strip().split(",")
    for name in ("sequence_accuracy", "digit_accuracy", "length_accuracy", "loss"):
        assert name in header and f"val_{name}" in header
    with Image.open(seq_run / "predictions.png") as png:
        assert png.size[0] > 300


def test_eval_of_a_sequence_run_repeats_its_test_figures_and_refuses_a_digit_store(seq_run, tmp_path):
    metrics = json.loads((seq_run / "metrics.json").read_text())
    again = json.loads(run(eval_main, ["--run", seq_run]).output)
    assert {k: again[k] for k in SEQUENCE_FIELDS} == {k: metrics[k] for k in SEQUENCE_FIELDS}
    digits = tiny_store(tmp_path / "digits.zarr", limit=16, canvas=40)
    refused = run(eval_main, ["--run", seq_run, "--store", digits, "--force"], ok=False)
    assert refused.exit_code == 1 and "has task 'digit'" in refused.output


def test_predict_on_image_files_equals_the_evaluation_path(seq_run, store, tmp_path):
    images, labels = Split(open_store(store), "test").read(np.arange(4))  # (4, 40, 40, 1)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image[..., 0]).save(paths[-1])
    model = load_run(seq_run)
    expected = [model.task.format(p) for p in predictions(model, crop_images(images, (36, 36)))]
    assert predict(seq_run, paths) == expected == predict(seq_run, images)
    printed = run(predict_main, ["--run", seq_run, *paths]).output.splitlines()
    assert printed == [f"{p}\t{n or '-'}" for p, n in zip(paths, expected)]
    assert json.loads(run(predict_main, ["--run", seq_run, "--json", paths[0]]).output) == {str(paths[0]): expected[0]}
    # An RGB file of another size is converted and resized as the store's images were.
    Image.fromarray(np.repeat(images[0], 3, axis=-1)).resize((80, 80), Image.Resampling.BILINEAR).save(tmp_path / "big.png")
    assert len(predict(seq_run, [tmp_path / "big.png"])) == 1
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    refused = run(predict_main, ["--run", seq_run, paths[0], not_an_image], ok=False)
    assert refused.exit_code == 1 and refused.output.startswith(f"Error: {not_an_image}: unreadable image (UnidentifiedImageError")
    assert len(refused.output.strip().splitlines()) == 1
    refused = run(predict_main, ["--run", seq_run, tmp_path / "missing.png"], ok=False)
    assert refused.exit_code == 1 and "missing.png: unreadable image (FileNotFoundError" in refused.output


def test_predict_prints_a_dash_for_a_number_with_no_digit(seq_run, tmp_path):
    """Length 0 is a reading the Goodfellow head can give: a line must still say so."""
    blank = shutil.copytree(seq_run, tmp_path / "blank")
    model = load_run(blank)
    length = model.classifier.fc_length_logits  # (F, 7) for lengths 0..5 and ">5": make 0 win for every image
    length.set_weights([np.zeros_like(length.kernel), np.eye(7, dtype="float32")[0] * 100])
    best = json.loads((blank / "state.json").read_text())["best_checkpoint"]
    model.save_weights(blank / best)
    image = tmp_path / "0.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(image)
    assert predict(blank, [image]) == [""]
    assert run(predict_main, ["--run", blank, image]).output == f"{image}\t-\n"
    assert json.loads(run(predict_main, ["--run", blank, "--json", image]).output) == {str(image): ""}


@pytest.mark.single_backend
def test_svhn_64_from_the_real_sample_trains_evaluates_and_predicts(tmp_path, monkeypatch, svhn_sample):
    """The whole SVHN path on the 3 real images per split: build svhn-64, train 1 epoch on 54x54
    crops, evaluate, predict on a real SVHN file."""
    monkeypatch.setenv("VISATT_LOCK", str(tmp_path / "datasets.lock"))
    store = build_dataset("svhn-64", tmp_path / "svhn-64.zarr", source="svhn", source_dir=str(svhn_sample), limit=3,
                          val_fraction=0.34, workers=1, progress=False)
    info = open_store(store)
    assert info.task == "sequence" and info.image_shape == (64, 64, 1) and info.splits == {"train": 2, "val": 1, "test": 3}
    out = tmp_path / "run"
    run(train_main, ["--store", store, "--out", out, "--epochs", 1, "--batch-size", 2, "--crop", 54, *CNN])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "svhn-64" and metrics["test_samples"] == 3
    assert json.loads(run(eval_main, ["--run", out]).output)["test_sequence_accuracy"] == metrics["test_sequence_accuracy"]
    printed = run(predict_main, ["--run", out, svhn_sample / "test" / "1.png"]).output
    assert printed.startswith(f"{svhn_sample / 'test' / '1.png'}\t")


def _trains_with(flag: str, store, tmp_path):
    """A 1-epoch run with `flag` records it, and its first loss differs from the same run's without
    it (runs of one seed are repeatable, so the option reached the training batches)."""
    out, plain = tmp_path / flag.strip("-"), tmp_path / "plain"
    run(train_main, ["--store", store, "--out", out, "--epochs", 1, "--batch-size", 16, flag, *CNN])
    assert json.loads((out / "metrics.json").read_text())["train"][flag.strip("-")] is True
    run(train_main, ["--store", store, "--out", plain, "--epochs", 1, "--batch-size", 16, *CNN])
    loss = [next(csv.DictReader((folder / "log.csv").open()))["loss"] for folder in (out, plain)]
    assert loss[0] != loss[1]


@pytest.mark.single_backend  # the loader's options through the CLI; the loader is numpy, the model's JAX path tested apart
def test_reposition_trains_mnist_pairs_and_refuses_other_stores(store, tmp_path):
    _trains_with("--reposition", tiny_store(tmp_path / "pairs.zarr", name="mnist-pairs", limit=48, canvas=84), tmp_path)
    for other in (store, tiny_store(tmp_path / "touching.zarr", name="mnist-pairs", limit=16, canvas=84, overlap=True)):
        bad = run(train_main, ["--store", other, "--out", tmp_path / "bad", "--reposition", *CNN], ok=False)
        assert bad.exit_code == 1 and "repositioning takes apart two digits that do not overlap" in bad.output
        assert not (tmp_path / "bad").exists()


@pytest.mark.single_backend  # the loader's options through the CLI; the loader is numpy, the model's JAX path tested apart
def test_permute_trains_mnist_sequences_and_refuses_other_stores(store, tmp_path):
    _trains_with("--permute", store, tmp_path)
    pairs = tiny_store(tmp_path / "pairs.zarr", name="mnist-pairs", limit=16, canvas=84)
    bad = run(train_main, ["--store", pairs, "--out", tmp_path / "bad", "--permute", *CNN], ok=False)
    assert bad.exit_code == 1 and "permuting digits trades the cells of a strip" in bad.output
    assert not (tmp_path / "bad").exists()
    both = run(train_main, ["--store", store, "--out", tmp_path / "both", "--permute", "--reposition", *CNN], ok=False)
    assert both.exit_code == 1 and "exclude each other" in both.output and not (tmp_path / "both").exists()


@pytest.mark.single_backend  # the loader's options through the CLI; the loader is numpy, the model's JAX path tested apart
def test_rotate_and_shear_reach_the_training_batches_and_are_recorded(store, tmp_path):
    out, plain = tmp_path / "turned", tmp_path / "plain"
    run(train_main, ["--store", store, "--out", out, "--epochs", 1, "--batch-size", 16, "--rotate", 10, "--shear", 0.2, *CNN])
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert (train["rotate"], train["shear"]) == (10.0, 0.2)
    run(train_main, ["--store", store, "--out", plain, "--epochs", 1, "--batch-size", 16, *CNN])
    loss = [next(csv.DictReader((folder / "log.csv").open()))["loss"] for folder in (out, plain)]
    assert loss[0] != loss[1]
    refused = run(train_main, ["--out", out, "--resume", "--epochs", 2, "--rotate", 5], ok=False)
    assert refused.exit_code == 1 and "cannot change rotate" in refused.output
    bad = run(train_main, ["--store", store, "--out", tmp_path / "bad", "--shear", 0.6, *CNN], ok=False)
    assert bad.exit_code == 2 and "0<=x<=0.5" in bad.output and not (tmp_path / "bad").exists()
    from visatt_models.train import RunError, make_run_spec  # the same check from Python

    with pytest.raises(RunError, match=r"rotate must be a number in 0..30, got 40 \(--rotate\)$"):
        make_run_spec(store, rotate=40)


def test_a_ctc_run_trains_evaluates_and_predicts(store, tmp_path):
    """The CTC head end to end on the 40x40 strips (20 frames after one stride-2 stage): figures, a
    repeatable evaluation, predictions; and a clear refusal, before any run folder is written, of a
    frame-less model, a missing --head, or crops too narrow for 5 digits' frames."""
    out = tmp_path / "ctc"
    frames = ["--set", "arch=modern", "--set", "pool=columns", "--set", "rnn=8", "--set", "dense=0"]
    run(train_main, ["--store", store, "--out", out, "--epochs", 1, "--batch-size", 16, "--head", "ctc",
                     *CNN[:2], "--set", "widths=4,8", "--verbose", "0", *frames])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["head"] == "ctc" and metrics["config"]["pool"] == "columns"
    again = json.loads(run(eval_main, ["--run", out]).output)
    assert {k: again[k] for k in SEQUENCE_FIELDS} == {k: metrics[k] for k in SEQUENCE_FIELDS}
    images, _ = Split(open_store(store), "test").read(np.arange(3))
    model = load_run(out)
    assert predict(out, images) == [model.task.format(p) for p in predictions(model, images)]
    narrow = ["--head", "ctc", "--crop", 32, *CNN[:2], "--set", "widths=4,8,8", *frames]  # 32 px, two halvings: 8 frames
    for args, message in ((["--head", "ctc", *CNN], "set pool=columns"), ([*CNN[:2], *frames], "add --head ctc"),
                          (narrow, "needs at least 9 frames for 5 digits; 32-pixel-wide images give 8")):
        refused = run(train_main, ["--store", store, "--out", tmp_path / "bad", *args], ok=False)
        assert refused.exit_code == 1 and message in refused.output and not (tmp_path / "bad").exists()
