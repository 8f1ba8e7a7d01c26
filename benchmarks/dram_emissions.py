"""Where a RAM/DRAM run's location policy points: the deterministic emission means per glimpse.

    .venv/bin/python benchmarks/dram_emissions.py runs/dram-pairs runs/dram-pairs-tanh [--count 64]

For each run folder, its last checkpoint reads the first `--count` val images of the store it
was trained on, at the policy mean; printed per glimpse: the share of means with a coordinate
beyond 0.95 (at the image border: locations are clipped to [-1, 1]) and the mean |coordinate|.
A policy whose means sit at the border looks at black corners, whatever its classifier could do.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import visatt_models
from pipelines.reader import Split, open_store
from visatt_models.runs import RunFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    for run in args.runs:
        folder = RunFolder(run)
        spec, state = folder.load_spec(), folder.load_state()
        images = Split(open_store(spec.store), "val", limit=args.count).images
        model = visatt_models.load_model(folder.path / state["last_checkpoint"], compile=False)
        means = np.abs(keras.ops.convert_to_numpy(model(images, deterministic=True)["means"]))  # (B, T, 2)
        border = (means.max(-1) > 0.95).mean(0)
        print(f"{run} (epoch {state['epochs_completed']}, location_mean={spec.model_config().location_mean}):")
        print("  at the border, per glimpse: " + " ".join(f"{v:.2f}" for v in border))
        print("  mean |coordinate|, per glimpse: " + " ".join(f"{v:.2f}" for v in means.mean((0, 2))))


if __name__ == "__main__":
    main()
