"""visatt-train --devices: data-parallel training (Keras DataParallel on JAX), on two virtual CPU devices."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from stores import run, tiny_store
from visatt_models.cli import train_main

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import keras
    from stores import run
    from visatt_models.cli import train_main
    assert len(keras.distribution.list_devices()) == 2
    for n in ("1", "2"):
        run(train_main, ["--store", sys.argv[2], "--out", f"{sys.argv[3]}/devices-{n}", "--devices", n, "--epochs", 1,
                         "--limit", 64, "--batch-size", 16, "--model", "cnn", "--set", "widths=4,8", "--set", "dense=16",
                         "--no-plots", "--verbose", 0])  # with dropout: random draws under sharding
""")


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.single_backend  # it runs JAX itself, with two virtual devices
def test_two_devices_give_the_losses_of_one_on_the_same_global_batch(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", limit=64, canvas=40)
    env = {**os.environ, "KERAS_BACKEND": "jax",  # two devices, compiled as the other tests are (conftest)
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(HERE), str(store), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_log(tmp_path / "devices-1" / "log.csv"), read_log(tmp_path / "devices-2" / "log.csv")
    assert len(one) == len(two) == 1
    for a, b in zip(one, two):
        for key in a:
            if key not in ("train_images_per_s", "epoch_seconds"):
                np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=1e-5, atol=1e-6, err_msg=key)
    sessions = json.loads((tmp_path / "devices-2" / "state.json").read_text())["sessions"]
    assert sessions[0]["devices"] == 2


@pytest.mark.single_backend
def test_more_devices_than_present_is_a_one_line_error(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", limit=32, canvas=40)
    result = run(train_main, ["--store", store, "--out", tmp_path / "r", "--devices", 64, "--batch-size", 16, "--verbose", 0], ok=False)
    assert result.exit_code == 1 and "--devices 64" in result.output
    assert not (tmp_path / "r").exists()  # refused before the run folder was made
    assert keras.distribution.distribution() is None
