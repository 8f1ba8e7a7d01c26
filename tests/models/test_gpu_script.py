"""The prepared GPU session (benchmarks/gpu/) runs end to end, tiny, on the CPU.

Here on the TensorFlow backend (the script's own logic is backend-agnostic and JAX compiles
slowly on a CPU); before a GPU call, run the same with KERAS_BACKEND=jax (README, "On a GPU")."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_run():
    """benchmarks/gpu/run.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "benchmarks/gpu/run.py")
    gpu_run = importlib.util.module_from_spec(spec)
    saved_path, saved_module = list(sys.path), sys.modules.get("gpu_run")
    sys.modules["gpu_run"] = gpu_run  # dataclasses look their module up
    try:
        spec.loader.exec_module(gpu_run)
    finally:
        sys.path[:] = saved_path  # run.py puts the checkout first
        if saved_module is None:
            sys.modules.pop("gpu_run", None)
        else:
            sys.modules["gpu_run"] = saved_module
    return gpu_run


@pytest.mark.single_backend
def test_the_gpu_script_smoke_run_writes_its_summary_and_run_folders(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks/gpu/run.py"), "--smoke", "--out", str(out),
           "--stores", str(tmp_path / "stores"), "--runs", str(tmp_path / "runs"),
           "--only", "stn-seq", "--throughput", "RAM visatt-60"]
    done = subprocess.run(cmd, env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "tensorflow" and summary["smoke"] is True
    assert [t["label"] for t in summary["throughput"]] == ["RAM visatt-60"]
    assert summary["throughput"][0]["images_per_s"] > 0
    assert [r["name"] for r in summary["runs"]] == ["stn-seq"]
    assert "test_sequence_accuracy" in summary["runs"][0] and summary["runs"][0]["epochs_completed"] == 1
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"stn-seq/metrics.json", "stn-seq/log.csv", "stn-seq/run.json"} <= names
    assert not any("checkpoints" in n for n in names)
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| `stn-seq` | `mnist-sequences` | stn | `--preset st-cnn-single` | 1 (1) |")


def test_the_results_table_gives_each_run_its_settings_and_figures():
    gpu_run = load_gpu_run()
    summary = {"runs": [
        {"device": "1 x GPU", "backend": "jax", "exit": 0, "train_images_per_s": 12345.6, "name": "ram-c60-cosine", "dataset": "mnist-cluttered-60", "model": "ram", "preset": "visatt-60",
         "overrides": [], "options": {"schedule": "cosine", "epochs": 135, "shift_keep_ink": True, "mc_samples": 10},
         "epochs_completed": 135, "best_epoch": 119,
         "test_error": 0.0435, "test_error_det": 0.0416, "test_error_mc": 0.0273},
        {"name": "crashed", "dataset": "mnist-pairs", "model": "cnn", "preset": None, "overrides": [], "options": {},
         "exit": 1},
        {"name": "dram-x", "dataset": "mnist-pairs", "model": "dram", "preset": None, "overrides": ["scales=4"],
         "options": {}, "exit": -15, "last_epoch": {"epoch": 7.0, "val_sequence_accuracy": 0.5, "lr": 0.001}},
    ]}
    lines = gpu_run.markdown(summary).splitlines()
    assert lines[2] == ("| `ram-c60-cosine` | `mnist-cluttered-60` | ram | `--preset visatt-60 --schedule cosine --epochs 135 --keep-ink --mc 10` "
                        "| 135 (119) | 4.35 / 4.16 / 2.73 | 12,346 | 0 |")
    assert lines[3] == "| `crashed` | `mnist-pairs` | cnn | `defaults` | ? (-) | not tested (no epoch logged) | - | 1 |"
    assert lines[4] == ("| `dram-x` | `mnist-pairs` | dram | `--set scales=4` | 7 (-) "
                        "| not tested (val val_sequence_accuracy 0.5000) | - | -15 |")


def test_the_wheel_list_holds_what_the_gpu_machine_lacks_and_nothing_it_has():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/make_wheels.py"), "--dry-run"],
                          capture_output=True, text=True, check=True)
    names = {line.split("==")[0] for line in done.stdout.split()}
    assert {"keras", "zarr", "numcodecs", "dask", "optree"} <= names
    assert not names & {"numpy", "jax", "h5py", "pillow", "click", "tqdm", "scipy"}


def test_every_gpu_run_is_a_valid_run_and_stays_valid_in_smoke_mode():
    """A typo in RUNS would cost a GPU call: each run's model config and training options build,
    at full size and with the smoke mode's one epoch."""
    import dataclasses

    from visatt_models import registry
    from visatt_models.config import TrainConfig
    from visatt_models.tasks import DigitTask, SequenceTask

    gpu_run = load_gpu_run()
    assert len({r.name for r in gpu_run.RUNS}) == len(gpu_run.RUNS)
    for run in gpu_run.RUNS:
        model = registry.get_model_spec(run.model)
        config = registry.make_config(model, preset=run.preset, overrides=list(run.overrides))
        options = dict(run.options)
        head = options.pop("head", None)  # make_run_spec's, not a training option
        task = SequenceTask(head=head or "independent") if run.dataset in ("mnist-pairs", "mnist-sequences") else DigitTask()
        model.model_cls.check_task(task, config)
        dataclasses.replace(TrainConfig(), **options)
        dataclasses.replace(TrainConfig(), **{**options, "epochs": 1})
