#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh carries to a bare GPU machine (no network, no PySCF):
#   .whl/                    wheels the GPU image lacks, for CPython 3.12 / manylinux x86-64
#                            (pydantic and its four dependencies, torchdeq, cuequivariance,
#                            cuequivariance-torch; 3.5 MB)
#   benchmarks/gpu_inputs/   PySCF's def2-SVP basis data and the benchmark datasets (19 MB)
# Run here, from anywhere, with the project's venv (PySCF installed) and network to PyPI.
#
# Not carried: PySCF (53 MB) and cuEquivariance's CUDA kernels (cuequivariance-ops-torch-cu13
# with cuequivariance-ops-cu13, 73 MB) exceed the 64 MiB a call carries. Without them the
# `cueq` backend runs cuEquivariance's pure-PyTorch path on the GPU; docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

rm -rf .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  "typing-extensions==$("$PY" -c 'import importlib.metadata as m; print(m.version("typing-extensions"))')" \
  annotated-types typing-inspection torchdeq cuequivariance==0.13.0 cuequivariance-torch==0.13.0
ls -l .whl
"$PY" benchmarks/gpu_inputs.py
du -sh .whl benchmarks/gpu_inputs
