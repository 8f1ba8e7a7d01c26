"""Where a sequence run's test errors fall: by the number's length, and, for numbers of two or
more digits, by how close the left edges of consecutive digits are (reading order turns on them).

    python benchmarks/error_breakdown.py --run runs/cnn-pairs-deep [--store STORE] [--split test]

Reads the run's best checkpoint and the store it was trained on (local stores; `--store` for one
moved elsewhere), predicts every sample of the split (one deterministic pass; RAM and DRAM at
their policy means) and prints, per bucket: samples, sequence error, and "order only" (the right
digits, in the wrong order). The boxes are the store's (top, left, height, width per digit).
"""

import argparse
import contextlib

import numpy as np
import zarr

from visatt_models.data import open_store
from visatt_models.evaluate import deterministic_policy, predictions
from visatt_models.inference import load_run
from visatt_models.tasks import BLANK
from visatt_models.train import check_same_data

GAP_BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 5), (6, None))


def breakdown(predicted: np.ndarray, labels: np.ndarray, lengths: np.ndarray, boxes: np.ndarray) -> list[str]:
    """Table lines for predictions (N, P) against labels (N, 5), lengths (N,), boxes (N, 5, 4).

    P may exceed 5 (DRAM's end-of-sequence step, the ctc head's sixth column): the labels are
    padded with blanks to P, so a digit there makes the prediction wrong."""
    extra = predicted.shape[1] - labels.shape[1]
    if extra > 0:
        labels = np.concatenate([labels, np.full((len(labels), extra), BLANK, labels.dtype)], axis=1)
    wrong = ~np.all(predicted == labels, axis=1)
    order_only = wrong & np.all(np.sort(predicted, axis=1) == np.sort(labels, axis=1), axis=1)

    def share(s):  # the share of all errors that falls in bucket s
        return wrong[s].sum() / max(wrong.sum(), 1)

    lines = [f"all: n={len(wrong)} error={wrong.mean():.4f} order only={order_only.mean():.4f}"]
    for length in np.unique(lengths):
        s = lengths == length
        lines.append(f"length {length}: n={s.sum()} error={wrong[s].mean():.4f} share of errors={share(s):.2f}")
    left = boxes[:, :, 1].astype(np.float64)
    present = np.arange(5)[None, :] < lengths[:, None]
    gaps = np.where(present[:, 1:], np.abs(left[:, 1:] - left[:, :-1]), np.inf)  # (N, 4)
    closest = gaps.min(axis=1)  # the closest consecutive pair per number (inf: one digit)
    for lo, hi in GAP_BUCKETS:
        s = (lengths > 1) & (closest >= lo) & (closest <= (np.inf if hi is None else hi))
        if s.any():
            label = f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi is not None else f">= {lo}")
            lines.append(f"closest left edges {label} px apart: n={s.sum()} ({s.mean():.2%} of all) "
                         f"error={wrong[s].mean():.4f} order only={order_only[s].mean():.4f} share of errors={share(s):.2f}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a sequence run folder")
    parser.add_argument("--store", help="the store (default: the one the run was trained on)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    model = load_run(args.run)
    if model.task.kind != "sequence":
        raise SystemExit(f"{args.run}: a {model.task.kind} run; this breakdown is for sequence stores")
    if model.run_spec.train.crop is not None:
        raise SystemExit(f"{args.run}: cropped runs are not supported (the boxes would need the crop)")
    store = args.store or model.run_spec.store
    check_same_data(model.run_spec.data, open_store(store))  # the dataset the run was trained on
    group = zarr.open_group(store, mode="r")[args.split]
    images, labels, lengths, boxes = (group[name][:] for name in ("images", "labels", "lengths", "boxes"))
    with deterministic_policy(model) if model.stochastic else contextlib.nullcontext():
        predicted = np.concatenate([predictions(model, images[i:i + 256]) for i in range(0, len(images), 256)])
    print("\n".join(breakdown(predicted, labels, lengths, boxes)))


if __name__ == "__main__":
    main()
