"""Wall time, peak memory and worker scaling of a full dataset build.

    python benchmarks/bench_build.py [--dataset mnist-cluttered] [--workers 1 2] [--schedulers threads processes]

Each build runs in a fresh subprocess (so peak RSS is that build's own) writing to a scratch
folder; sources must be in the cache (`visatt-data fetch mnist`). Prints one line per worker
count and local scheduler (`visatt-data build` uses processes, forked, with more than one
worker on Linux; threads with one), and the speed-up relative to the first line, also for the part of the wall time beyond a `--limit 1` build of the
same command (start-up, imports, reading the sources, starting the pool), which does not scale.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(dataset: str, workers: int, out: Path, scheduler: str, limit: int | None = None) -> tuple[float, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "pipelines.cli", "build", dataset,
           "--out", str(out), "--overwrite", "--workers", str(workers), "--scheduler", scheduler, "--quiet"]
    if limit:
        cmd += ["--limit", str(limit)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kb / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-cluttered")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--schedulers", nargs="+", default=["processes", "threads"], choices=["threads", "processes"])
    parser.add_argument("--repeat", type=int, default=2, help="builds per worker count; the best is reported")
    args = parser.parse_args()
    configs = [(s, w) for s in args.schedulers for w in args.workers]
    walls = {c: [] for c in configs}
    fixeds = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        # Round-robin over the configurations, so that a noisy spell of a shared machine falls on
        # all of them alike rather than on one.
        for _ in range(args.repeat):
            for scheduler, workers in configs:
                walls[scheduler, workers].append(run(args.dataset, workers, Path(tmp) / "store.zarr", scheduler))
                # The fixed part: the same command for one sample per split (start-up, imports, sources, pool).
                fixeds[scheduler, workers].append(run(args.dataset, workers, Path(tmp) / "tiny.zarr", scheduler, limit=1)[0])
        size = sum(f.stat().st_size for f in (Path(tmp) / "store.zarr").rglob("*") if f.is_file())
    base = None
    for scheduler, workers in configs:
        wall, rss = min(walls[scheduler, workers])
        fixed = min(fixeds[scheduler, workers])
        base = base or (wall, fixed)
        print(f"{args.dataset}: {scheduler} workers={workers} wall={wall:.1f}s (best of {args.repeat}, process start "
              f"included) peak_rss={rss:.2f}GB store={size / 1e6:.0f}MB speedup_vs_first={base[0] / wall:.2f}x; "
              f"fixed part {fixed:.1f}s (a --limit 1 build), the rest {wall - fixed:.1f}s, "
              f"its speedup_vs_first={(base[0] - base[1]) / (wall - fixed):.2f}x")

if __name__ == "__main__":
    main()
