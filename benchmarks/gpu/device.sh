#!/bin/bash
# The command of one GPU session (the device tool's `run`), from the repository root:
#
#   run(command="bash benchmarks/gpu/device.sh", carry=[".whl", ".data/mnist"], timeout_s=600)
#   run(command="bash benchmarks/gpu/device.sh --throughput --only cnn-seq stn-seq", ...)   # no throughput step
#
# run.py ends itself at --deadline-min (default 9.3 minutes) so that everything is written
# before the device call's 10-minute limit.
#
# Prepare on the CPU first (README, "On a GPU"):
#   .venv/bin/python benchmarks/gpu/make_wheels.py                 # .whl/: Keras, zarr, dask, ...
#   mkdir -p .data/mnist && cp ../shared/sources/mnist/*.gz .data/mnist/
#   KERAS_BACKEND=jax .venv/bin/python benchmarks/gpu/run.py --smoke --out /tmp/gpu-smoke
#
# Arguments go to run.py. It writes $OUT/summary.json, $OUT/results.md, $OUT/results.tar.gz and $OUT/log.txt.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/log.txt"
python3 benchmarks/gpu/run.py --mnist .data/mnist --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
