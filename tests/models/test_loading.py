"""The loading API's adapters (Keras PyDataset, tf.data, map-style for PyTorch) and training from
a packed store served over real (loopback) HTTP."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import pipelines
from http_server import serve
from pipelines import catalog
from stores import run, tiny_store
from visatt_models.cli import eval_main, train_main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("stores") / "cluttered.zarr", limit=64, canvas=40)


def test_a_split_is_numpy_and_map_style(store):
    split = pipelines.load(store, split="val")
    assert split.images.shape == (64, 40, 40, 1) and split.images.dtype == np.uint8 and split.labels.shape == (64,)
    image, label = split[3]
    assert np.array_equal(image, split.images[3]) and label == split.labels[3]
    assert np.array_equal(split[-1][0], split.images[-1])
    with pytest.raises(IndexError):
        split[64]
    lazy = pipelines.load(store, split="val", lazy=True)
    assert not lazy.in_memory and np.array_equal(lazy[3][0], image)
    with pytest.raises(ValueError, match="apply to a dataset name"):
        pipelines.load(store, version="1.0.0")


def test_keras_adapter_trains_and_reshuffles_each_epoch(store):
    split = pipelines.load(store, split="train")
    batches = split.as_keras(16, shuffle=True, seed=1)
    first = batches[0][1].copy()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40, 40, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(batches, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert not np.array_equal(batches[0][1], first)  # Keras ended two epochs: a new order


def test_tf_data_adapter_gives_samples_or_batches_and_a_new_order_per_pass(store):
    import tensorflow as tf

    split = pipelines.load(store, split="test")
    samples = split.as_tf_dataset()
    assert samples.element_spec[0].shape == (40, 40, 1) and samples.element_spec[0].dtype == tf.uint8
    assert int(samples.cardinality()) == 64
    assert np.array_equal(np.stack([y.numpy() for _, y in samples]), split.labels)  # unshuffled: store order
    batched = split.as_tf_dataset(batch_size=10, shuffle=True)
    assert int(batched.cardinality()) == 7
    one, two = ([y.numpy() for _, y in batched] for _ in range(2))
    assert sorted(np.concatenate(one)) == sorted(split.labels) and not np.array_equal(np.concatenate(one), np.concatenate(two))


def test_torch_adapter_applies_transforms_and_a_dataloader_wraps_it(store):
    split = pipelines.load(store, split="test")
    dataset = split.as_torch(transform=lambda x: x.astype(np.float32) / 255, target_transform=int)
    image, label = dataset[5]
    assert len(dataset) == 64 and image.dtype == np.float32 and image.max() <= 1 and label == int(split.labels[5])
    torch = pytest.importorskip("torch", reason="torch is not installed (not a visatt dependency)")
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert tuple(images.shape) == (8, 40, 40, 1) and labels.tolist() == [int(v) for v in split.labels[:8]]


@pytest.mark.single_backend
def test_train_and_eval_from_a_packed_store_over_http(store, tmp_path):
    (tmp_path / "site").mkdir()
    packed = catalog.pack(store, tmp_path / "site", progress=False)
    out = tmp_path / "run"
    with serve(tmp_path / "site") as base:
        url = f"{base}/{packed.name}"
        run(train_main, ["--store", url, "--out", out, "--epochs", 1, "--model", "cnn", "--set", "widths=4,8",
                         "--set", "dense=16", "--batch-size", 16, "--verbose", 0, "--no-plots"])
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["store"] == url and metrics["test_samples"] == 64
        evaluated = json.loads(run(eval_main, ["--run", out]).output)
        assert evaluated["store"] == url and evaluated["test_samples"] == 64
        # The saved model loads in a fresh interpreter with Keras' own loader once the package is
        # imported (Keras imports the modules of its own packages only), and through load_model.
        last = next((out / "checkpoints").glob("last-epoch-*.keras"))
        code = ("import keras, visatt_models, numpy as np; a = keras.saving.load_model({p!r}); "
                "b = visatt_models.load_model({p!r}); x = np.zeros((2, 40, 40, 1), np.uint8); "
                "print(type(a).__name__, np.allclose(a(x)['logits'], b(x)['logits']))").format(p=str(last))
        printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert printed.split() == ["CNN", "True"]
