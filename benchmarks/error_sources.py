"""Which source digits a sequence run misreads on `mnist-sequences`: the store's recipe is
replayed to find each strip's MNIST digits (sample i of a split holds that split's source digit
i, among others drawn from the sample's own generator), and the run's misread digit slots are
counted by source digit: how many distinct digits, how many misread in every strip they appear
in (a hard digit, not a hard strip), and the wrong sequences whose misreads all fall on those.
With two runs, the digits both misread.

    python benchmarks/error_sources.py --run runs/cnn-ctc-seq-keepink8-permute [--run OTHER] [--split test]

Reads the runs' best checkpoints and the store the first was trained on (local stores), and the
MNIST files of the store's recipe (the cache, or `--mnist DIR`). Slots are compared where the
predicted length is right (a wrong length counts as a wrong sequence, with no slot).
"""

import argparse
import dataclasses

import numpy as np
import zarr

from pipelines.reader import open_store
from pipelines.sequences import SEQUENCES, SequenceRecipe, generate_sequences, split_pools
from pipelines.sources import load_mnist
from visatt_models.evaluate import predictions
from visatt_models.inference import load_run
from visatt_models.tasks import BLANK
from visatt_models.train import check_same_data


def source_digits(store, split: str, mnist_dir=None) -> np.ndarray:
    """(N, 5) the index in the split's source digits of each digit of each sample (-1 past its
    length), by generating the split again with every source digit labelled by its index (the
    index's low byte, then its high byte: labels are uint8). Checked against the stored labels."""
    info = open_store(store)
    from pipelines.datasets import DATASETS

    if DATASETS[info.dataset].family is not SEQUENCES:
        raise SystemExit(f"{store}: a {info.dataset} store; the replay is for mnist-sequences")
    fields = {f.name for f in dataclasses.fields(SequenceRecipe)}
    recipe = SequenceRecipe(**{k: v for k, v in info.recipe.items() if k in fields})
    pool_images, pool_labels = split_pools(recipe, load_mnist(recipe.source, mnist_dir))[split]
    group = zarr.open_group(str(store), mode="r")[split]
    labels, lengths = group["labels"][:], group["lengths"][:]
    index = np.arange(len(pool_labels))
    low, high = (generate_sequences(recipe, pool_images, part.astype(np.uint8), split, 0, len(labels))["labels"]
                 for part in (index % 256, index // 256))
    present = np.arange(labels.shape[1])[None, :] < lengths[:, None]  # (N, 5)
    digits = np.where(present, high.astype(np.int64) * 256 + low, -1)
    if not np.array_equal(np.where(present, pool_labels[np.maximum(digits, 0)], labels), labels):
        raise SystemExit(f"{store}: replaying the recipe does not give the stored labels")
    return digits


def misread_slots(predicted: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, 5) bool: digit slots read wrong, in samples whose predicted length is right."""
    predicted = predicted[:, : labels.shape[1]]
    right_length = (predicted != BLANK).sum(axis=1) == lengths
    present = np.arange(labels.shape[1])[None, :] < lengths[:, None]
    return (predicted != labels) & present & right_length[:, None]


def by_source(misread: np.ndarray, digits: np.ndarray) -> dict:
    """Counts of the misread slots by source digit (see the module docstring)."""
    size = int(digits.max()) + 1
    uses = np.bincount(digits[digits >= 0], minlength=size)
    wrong = np.bincount(digits[misread], minlength=size)
    always = (wrong == uses) & (wrong > 0)
    on_always = misread.any(axis=1) & ~(misread & ~always[np.maximum(digits, 0)]).any(axis=1)
    return {"slots": int(misread.sum()), "digits": int((wrong > 0).sum()), "always": int(always.sum()),
            "always_slots": int(wrong[always].sum()), "twice": int((wrong >= 2).sum()),
            "twice_slots": int(wrong[wrong >= 2].sum()), "sequences_on_always": int(on_always.sum()),
            "misread": set(np.nonzero(wrong)[0].tolist())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a sequence run (give two to compare)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--mnist", help="folder of the MNIST files (default: the cache)")
    args = parser.parse_args(argv)
    models = [load_run(run) for run in args.run]
    store = models[0].run_spec.store
    for model in models:
        check_same_data(model.run_spec.data, open_store(store))
    digits = source_digits(store, args.split, args.mnist)
    group = zarr.open_group(str(store), mode="r")[args.split]
    images, labels, lengths = group["images"][:], group["labels"][:], group["lengths"][:]
    print(f"{store} {args.split}: {len(images)} strips, each source digit in {np.mean(np.bincount(digits[digits >= 0])):.2f} on average")
    found = []
    for run, model in zip(args.run, models):
        predicted = np.concatenate([predictions(model, images[i : i + 500]) for i in range(0, len(images), 500)])
        right = model.task.count(predicted, labels)["sequences_right"]  # labels padded to a wider prediction
        counts = by_source(misread_slots(predicted, labels, lengths), digits)
        found.append(counts["misread"])
        print(f"{run}: {len(labels) - right} wrong sequences; {counts['slots']} misread slots from {counts['digits']} source "
              f"digits; misread in every appearance: {counts['always']} digits ({counts['always_slots']} slots), "
              f"in two or more: {counts['twice']} ({counts['twice_slots']} slots); wrong sequences whose misreads "
              f"are all on digits misread in every appearance: {counts['sequences_on_always']}")
    if len(found) == 2:
        print(f"source digits misread by both runs: {len(found[0] & found[1])} of {len(found[0])} and {len(found[1])}")


if __name__ == "__main__":
    main()
