#!/usr/bin/env bash
# The GPU checks of the torch backend in one command (under 8 minutes on one H100):
# the CUDA tests of tests/test_torch_backend.py, then benchmarks/gpu_bench.py.
# Needs python3 with torch (CUDA) and torchvision, plus onnx, onnxruntime, opencv, pillow,
# scikit-image and matplotlib; runs from a source checkout without installing the package.
#   bash benchmarks/gpu_check.sh [gpu_bench.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RESNET50_HOME="${RESNET50_HOME:-/tmp/resnet50-gpu-cache}" RESNET50_TEST_HOME="${RESNET50_TEST_HOME:-/tmp/resnet50-gpu-cache}"
PY="${PYTHON:-python3}"
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name())
PY
"$PY" -m pytest tests/test_torch_backend.py -q -rs -p no:cacheprovider
timeout 450 "$PY" benchmarks/gpu_bench.py --budget 420 "$@"
