"""How much ink `--rotate`/`--shear` cut from a store's training images: each image turned and
slanted by the loader's draws for (seed, epoch 0), and the share of its ink (sum of pixel values)
that the result keeps (bilinear resampling and its rounding alone lose a little). Strips that
fill the width lose the corners of their ends.

    python benchmarks/affine_ink.py --store mnist-sequences.zarr --rotate 8 --shear 0.15 [--limit N]
"""

import argparse

import numpy as np

from pipelines.batches import Batches
from pipelines.reader import Split, open_store


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--rotate", type=float, default=8.0)
    parser.add_argument("--shear", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    split = Split(open_store(args.store), args.split, limit=args.limit)
    images = split.arrays[0]
    batches = Batches(split, 256, shuffle=False, seed=args.seed, rotate=args.rotate, shear=args.shear)
    turned = np.concatenate([batches[i][0] for i in range(len(batches))])
    ink = images.reshape(len(images), -1).sum(1)
    kept = (turned.reshape(len(images), -1).sum(1) / np.maximum(ink, 1))[ink > 0]  # empty images keep nothing to lose
    print(f"{split.info.dataset} {args.split} (the first {len(kept)} images with ink), rotate {args.rotate:g} shear {args.shear:g}: "
          f"ink kept mean {kept.mean():.3f}, 1st percentile {np.percentile(kept, 1):.3f}; "
          f"images losing more than 5%: {100 * (kept < 0.95).mean():.2f}%, more than 20%: {100 * (kept < 0.8).mean():.2f}%")


if __name__ == "__main__":
    main()
