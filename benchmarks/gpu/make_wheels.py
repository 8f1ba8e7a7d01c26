"""Download the cp312 manylinux wheels that the GPU machine lacks into `.whl/` (git-ignored).

    .venv/bin/python benchmarks/gpu/make_wheels.py            # then carry `.whl` to the device

The GPU machine (DEVELOPERS.md, the device tool's KINDS.md) has Python 3.12 with JAX (CUDA),
numpy, scipy, h5py, pillow, click, tqdm, fsspec, tensorboard and many more, but no Keras, zarr,
numcodecs or dask, and it reaches no package index. This walks the requirements of what
visatt needs there (`ROOTS`), from the versions installed in this virtual environment, skips
what the machine already has (`ON_THE_GPU_MACHINE`), and downloads one wheel per remaining
package with `pip download --no-deps` for CPython 3.12 on manylinux x86-64. It prints the
total size, which must stay well under the 64 MiB a device call carries.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOTS = ["keras", "zarr", "numcodecs", "dask"]  # distributed: only for --scheduler, not used there

# The machine's image ('cuda'), as the device tool's KINDS.md lists it (2026-11-17): only the
# names that visatt's dependencies ask for matter here.
ON_THE_GPU_MACHINE = {
    "absl-py", "click", "cloudpickle", "fsspec", "h5py", "jinja2", "markdown-it-py", "markupsafe", "mdurl",
    "ml-dtypes", "msgpack", "numpy", "packaging", "pillow", "psutil", "pygments", "pyyaml", "rich", "scipy",
    "sortedcontainers", "tensorboard", "toolz", "tqdm", "typing-extensions", "urllib3", "zipp", "jax", "jaxlib",
}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(roots) -> dict[str, str]:
    """{package: installed version} of the roots and their requirements, minus the machine's."""
    found, todo = {}, list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in found or name in ON_THE_GPU_MACHINE:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here
        found[name] = dist.version
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            if ";" in req and "python_version" in req and "< \"3.1" in req:
                continue  # a back-port for older Pythons
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".whl"))
    parser.add_argument("--dry-run", action="store_true", help="list the pins, download nothing")
    args = parser.parse_args(argv)
    pins = needed(ROOTS)
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")
    if args.dry_run:
        return
    args.dest.mkdir(exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for name, version in sorted(pins.items()):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(args.dest),
                        f"{name}=={version}"], check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
