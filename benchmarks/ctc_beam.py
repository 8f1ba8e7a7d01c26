"""Greedy against beam-search decoding of a `--head ctc` run: the sequence error of each on a
split, and how many predictions beam search changes.

    python benchmarks/ctc_beam.py --run runs/cnn-ctc-seq-keepink8-permute [--widths 4 16 100] [--split test]

The run's task decodes greedily (the best frame label per frame, repeats merged, blanks dropped:
the best path); beam search (`keras.ops.ctc_decode`, the blank as its mask) looks for the most
probable labelling instead, summed over its paths. Reads the run's best checkpoint and the store
it was trained on (local stores).
"""

import argparse
import time

import keras
import numpy as np
import zarr

from visatt_models.data import open_store
from visatt_models.evaluate import outputs_numpy
from visatt_models.inference import load_run
from visatt_models.tasks import decode_numpy, head_log_probs
from visatt_models.train import check_same_data


def beam_decode(task, log_probs: np.ndarray, width: int) -> np.ndarray:
    """Beam-search labellings of (B, T, K + 1) frame log-probabilities as the task's predictions:
    (B, max_length + 1) padded with blanks (a sixth digit kept, so that it counts as wrong)."""
    frames = np.full(len(log_probs), log_probs.shape[1], "int32")
    decoded, _ = keras.ops.ctc_decode(log_probs, frames, strategy="beam_search", beam_width=width, mask_index=task.blank)
    decoded = keras.ops.convert_to_numpy(decoded)[0]  # (B, T), -1 past the labelling
    out = np.full((len(decoded), task.max_length + 1), task.blank, np.int64)
    for row, labels in zip(out, decoded):
        digits = labels[labels >= 0][: task.max_length + 1]
        row[: len(digits)] = digits
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run with the ctc head")
    parser.add_argument("--store", help="the store (default: the one the run was trained on)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 16, 100])
    args = parser.parse_args(argv)
    model = load_run(args.run)
    task = model.task
    if getattr(task, "head", None) != "ctc":
        raise SystemExit(f"{args.run}: not a run with the ctc head")
    store = args.store or model.run_spec.store
    check_same_data(model.run_spec.data, open_store(store))
    group = zarr.open_group(store, mode="r")[args.split]
    images, labels = group["images"][:], group["labels"][:]
    log_probs = np.concatenate([head_log_probs(task, outputs_numpy(model, images[i : i + 256]))["ctc_logits"]
                                for i in range(0, len(images), 256)])  # (N, T, K + 1)
    greedy = decode_numpy(task, {"ctc_logits": log_probs})

    def error(predicted):  # the task's exact count (labels padded to the sixth column)
        return 100 * task.summarise(task.count(predicted, labels))["sequence_error"]

    print(f"{args.run} on {args.split} ({len(images)} images, {log_probs.shape[1]} frames)")
    print(f"greedy        sequence error {error(greedy):.2f}%")
    for width in args.widths:
        start = time.perf_counter()
        beam = beam_decode(task, log_probs, width)
        seconds = time.perf_counter() - start
        changed = int(np.any(beam != greedy, axis=1).sum())
        print(f"beam {width:<8d} sequence error {error(beam):.2f}%  "
              f"{changed} predictions changed  {seconds:.1f} s")


if __name__ == "__main__":
    main()
