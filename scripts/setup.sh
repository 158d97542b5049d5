#!/usr/bin/env bash
# Set up a virtual environment in .venv with deqh and its test tools.
# On a machine without an NVIDIA GPU, install PyTorch's CPU build first so the `torch>=2.4`
# range is already satisfied and pip does not fetch a multi-GB CUDA build.
# Override the torch requirement with DEQH_TORCH, e.g. DEQH_TORCH="torch==2.5.1".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        python -m pip install -q "${DEQH_TORCH:-torch>=2.4}"
    else
        python -m pip install -q "${DEQH_TORCH:-torch==2.13.0}"
    fi
fi
python -m pip install -q -e ".[test]"
echo "deqh is set up in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
