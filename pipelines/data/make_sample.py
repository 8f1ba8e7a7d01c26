"""Write the embedded MNIST sample: the first 3,000 training and 2,000 test digits of the real files.

Run from the repository root:  python -m pipelines.data.make_sample ../shared/sources/mnist
It writes gzipped IDX files (mtime 0, so the .gz bytes are reproducible) and SHA256SUMS.txt.
"""

import gzip
import hashlib
import sys
from pathlib import Path

from pipelines.sources import MNIST_FILES, SAMPLE_SIZES, read_idx

HERE = Path(__file__).parent


def main(src: str) -> None:
    lines = []
    for f in MNIST_FILES:
        array = read_idx(Path(src) / f"{f.name}.gz", sha256=f.sha256)
        n = SAMPLE_SIZES["train" if f.name.startswith("train") else "test"]
        sample = array[:n]
        header = bytes([0, 0, 0x08, sample.ndim]) + b"".join(d.to_bytes(4, "big") for d in sample.shape)
        data = header + sample.tobytes()
        (HERE / f"{f.name}.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        lines.append(f"{hashlib.sha256(data).hexdigest()} {len(data)} {f.name}")
    (HERE / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
