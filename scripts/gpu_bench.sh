#!/usr/bin/env bash
# `make bench` on a lent GPU machine (the GPU figures issue 7 asks for), in two steps:
#
#   here:  bash scripts/gpu_bench.sh prepare
#          downloads the wheels the GPU image lacks (it has torch, lightning, timm, torchmetrics,
#          numpy, pyyaml, safetensors, ...; not open_clip, POT or pydantic) into .whl/ (git-ignored)
#   there: the device tool's run with carry [".whl"], timeout_s 600:
#          bash scripts/gpu_bench.sh run
#          -> $OUT/BENCHMARKS-gpu.md and .json; copy their figures into docs/PERFORMANCE.md
#
# The GPU image's python3 is 3.12 with its own CUDA torch: nothing here replaces torch there.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
      open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 POT==0.9.7.post1 \
      pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
    ls .whl
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    out="${OUT:-docs}/BENCHMARKS-gpu.md"
    python3 -m benchmarks.run --device cuda --out "$out" 2>&1 | tee "${out%.md}.log"
    ;;
  *)
    echo "usage: bash scripts/gpu_bench.sh prepare|run" >&2
    exit 2
    ;;
esac
