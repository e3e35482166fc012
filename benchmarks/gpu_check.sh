#!/usr/bin/env bash
# fedlm's local training on a CUDA GPU (float32, bfloat16, 4-bit NF4): see benchmarks/gpu_check.py.
# Runs the check with the repository's venv python (or $PYTHON); arguments pass through.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
    echo "gpu_check.sh: no python at $python; create the venv as the README says (with the gpu extra for 4-bit) or set PYTHON" >&2
    exit 2
fi
exec "$python" "$root/benchmarks/gpu_check.py" "$@"
