#!/usr/bin/env bash
# The GPU check of issue #14 in one go (< 5 minutes on an H100/H200): parity GPU vs ONNX Runtime CPU,
# engine frames/s (eager/compiled x FP32/FP16 x widths 1.0/0.5/0.25, 480x360, K=4, GPU scoring included),
# and `avminer bench pipeline` on the torch CUDA backend. Prints one JSON object (tools/gpu_check.py).
#
# The GPU machines' image has Python 3.12, torch 2.11+cu130, onnxruntime (CPU), numpy, pyyaml, pillow and
# prometheus-client, and no network. It runs from this source tree (nothing is installed): the wheels
# avminer needs beyond those are unpacked from a folder into a temporary directory on PYTHONPATH.
# Fetch them once, on a machine with network, into .whl/ at the repository root:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       -d .whl fastavro kafka-python crc32c simplejpeg
#
# (fastavro reads the sample drive, simplejpeg decodes its frames; kafka-python and crc32c are for
# completeness: the check runs the miner embedded.)
#
# Usage: tools/gpu_check.sh [--out FILE] [--budget-s S] [--no-compile] [--parts P,...] [--train-data DIR] [--device cpu --quick]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
SITE="$(mktemp -d "${TMPDIR:-/tmp}/avminer-gpu-check.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
  # A wheel is a zip of importable files: unpacking needs neither pip nor a network.
  "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$SITE" "${wheels[@]}"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
missing="$("$PY" -c 'import importlib.util as u; print(" ".join(m for m in ("fastavro", "simplejpeg", "numpy", "yaml", "prometheus_client", "onnxruntime", "torch") if u.find_spec(m) is None))')"
if [[ -n "$missing" ]]; then
  echo "gpu_check: missing Python modules: $missing (put their wheels in $WHEELS; see the top of this script)" >&2
  exit 2
fi
exec timeout 450 "$PY" "$REPO/tools/gpu_check.py" "$@"
