#!/usr/bin/env bash
# deqh on a bare NVIDIA GPU machine, in one go and under 8 minutes: the `gpu` tests (SPHNet's
# layers under every backend among them: the plugin is installed beside deqh), the ops
# benchmark (QHNet and DEQHNet, every backend), 200 steps of DEQHNet training per backend
# (the loss must fall), a torch.compile attempt and, where gpu4pyscf is installed, GPU labels
# against CPU labels; everything in one log. See docs/gpu.md.
#
#   prepare, here (network and PySCF, once):  bash benchmarks/prepare_gpu_check.sh
#       -> .whl/ (wheels the GPU image lacks, for Python 3.12: pydantic, torchdeq,
#          cuEquivariance; 3.5 MB) and benchmarks/gpu_inputs/ (PySCF's basis data and
#          QH9/MD17-sized datasets; 19 MB); both git-ignored
#   run, from the repo root:                  bash benchmarks/gpu_check.sh
#       device tool: carry [".whl", "benchmarks/gpu_inputs"]; log: $OUT/gpu_check.log
#   CPU dry run (all but CUDA, tiny sizes):   DEQH_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh
#
# Environment: DEQH_GPU_CHECK_DEVICE (cuda), PYTHON (python3), DEQH_GPU_CHECK_TINY (1 on a
# CPU: tiny model and batches), DEQH_GPU_CHECK_BUDGET_S (470: the whole check), phase limits
# DEQH_GPU_CHECK_{TESTS,TRAIN,BENCH,COMPILE}_S, DEQH_GPU_CHECK_TRAIN_MINUTES (per backend).
set -u -o pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEQH_GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ "$DEVICE" = cpu ]; then TINY=${DEQH_GPU_CHECK_TINY:-1}; else TINY=${DEQH_GPU_CHECK_TINY:-0}; fi
BUDGET=${DEQH_GPU_CHECK_BUDGET_S:-470}
START=$SECONDS
SUMMARY=()

# phase NAME LIMIT_S COMMAND...: runs COMMAND under a time limit (capped by what is left of the
# budget), records ok / FAILED / TIMED OUT and the seconds it took
phase() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 5))
  ((limit > left)) && limit=$left
  echo
  echo "=== $name (limit ${limit} s; $((SECONDS - START)) s into the check) ==="
  if ((limit < 10)); then
    SUMMARY+=("$name: SKIPPED (no time left)")
    return
  fi
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local status=ok
  ((rc == 124 || rc == 137)) && status="TIMED OUT"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
  SUMMARY+=("$name: $status, $((SECONDS - t0)) s")
}

main() {
echo "=== deqh GPU check: device $DEVICE, tiny=$TINY, budget ${BUDGET} s, $(date -u +%FT%TZ) ==="
git log -1 --format='commit %h %s' 2>/dev/null || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# --- what the image lacks: wheels from .whl/ and deqh itself (for its entry points) ---------
SITE=${TMPDIR:-/tmp}/deqh-gpu-check-site
missing=()
for module in pydantic torchdeq cuequivariance_torch; do
  "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
done
deqh_here=$("$PY" - <<EOF 2>/dev/null
import importlib.metadata as md, os, deqh_core
here = os.path.realpath("$PWD")
ok = any(e.name == "deqh" for e in md.entry_points(group="deqh"))
print(int(ok and os.path.realpath(deqh_core.__file__).startswith(here)))
EOF
)
if ((${#missing[@]})) || [ "$deqh_here" != 1 ]; then
  wheels=()
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]}; installing the wheels of .whl/"
    compgen -G ".whl/*.whl" >/dev/null || { echo "no .whl/: run benchmarks/prepare_gpu_check.sh"; exit 1; }
    wheels=(.whl/*.whl)
  fi
  echo "installing deqh from this checkout into $SITE"
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
    --target "$SITE" "${wheels[@]}" . ./plugins/deqh-sphnet || { echo "pip install failed"; exit 1; }
  rm -rf build
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'EOF'
import importlib.metadata as md
import torch
print(f"python {__import__('sys').version.split()[0]}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}, available: {torch.cuda.is_available()})")
for name in ("e3nn", "torch-geometric", "torchdeq", "pydantic", "cuequivariance-torch",
             "cuequivariance-ops-torch-cu12", "cuequivariance-ops-torch-cu13", "deqh"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device: nothing to check (for a CPU dry run set DEQH_GPU_CHECK_DEVICE=cpu)"
  exit 1
fi
[ -f benchmarks/gpu_inputs/basis.npz ] || "$PY" -c "import pyscf" 2>/dev/null || {
  echo "benchmarks/gpu_inputs/ is missing: run benchmarks/prepare_gpu_check.sh"
  exit 1
}
[ -f benchmarks/gpu_inputs/qm9-like.db ] || "$PY" benchmarks/gpu_inputs.py

# --- 1. tests marked gpu (benchmarks/gpu_tests.py: without PySCF, layouts come from
# gpu_inputs and modules that import PySCF or ASE themselves are left out, listed) ------------
if [ "$DEVICE" = cuda ]; then
  phase "gpu tests" "${DEQH_GPU_CHECK_TESTS_S:-75}" "$PY" benchmarks/gpu_tests.py -q -m gpu \
    -p no:cacheprovider -W ignore::DeprecationWarning tests
else
  phase "ops tests (CPU)" "${DEQH_GPU_CHECK_TESTS_S:-120}" "$PY" benchmarks/gpu_tests.py -q \
    -p no:cacheprovider -W ignore::DeprecationWarning tests/test_ops.py
fi

# --- 2. DEQHNet training, every backend ----------------------------------------------------
if ((TINY)); then train=(--tiny --steps 30 --lr 2e-2); else train=(--steps 200); fi
phase "DEQHNet training per backend" "${DEQH_GPU_CHECK_TRAIN_S:-180}" "$PY" benchmarks/train_check.py \
  --device "$DEVICE" --minutes "${DEQH_GPU_CHECK_TRAIN_MINUTES:-0.7}" "${train[@]}"

# --- 3. ops benchmark: QHNet and DEQHNet, QH9 and MD17 batches, forward and training step ---
# (uracil, like ethanol an MD17 batch, is left out for time: bench_ops.py runs it by default)
if ((TINY)); then bench=(--tiny); else bench=(--repeat 3 --systems qh9 ethanol); fi
phase "ops benchmark" "${DEQH_GPU_CHECK_BENCH_S:-150}" "$PY" benchmarks/bench_ops.py \
  --device "$DEVICE" --json "$OUT/bench_ops.json" "${bench[@]}"

# --- 4. torch.compile attempt: QHNet's forward on the QH9 batch, every backend -------------
if ((TINY)); then compile=(--tiny --backends fused); else compile=(--repeat 3); fi
phase "torch.compile attempt" "${DEQH_GPU_CHECK_COMPILE_S:-70}" "$PY" benchmarks/bench_ops.py \
  --device "$DEVICE" --variants QHNet --systems qh9 --no-train --compile "${compile[@]}"

# --- 5. GPU labels (deqh data --engine gpu4pyscf) against PySCF's CPU labels ----------------
# only where PySCF, gpu4pyscf and qm9pack are installed: the lent GPU machines have none of
# them, and their wheels exceed what a check carries (docs/data.md)
if [ "$DEVICE" = cuda ] && "$PY" -c "import pyscf, gpu4pyscf, qm9pack" 2>/dev/null; then
  phase "gpu4pyscf labels vs CPU" "${DEQH_GPU_CHECK_LABELS_S:-120}" "$PY" benchmarks/gpu_labels.py
else
  SUMMARY+=("gpu4pyscf labels vs CPU: SKIPPED (needs pyscf, gpu4pyscf and qm9pack installed)")
fi

echo
echo "=== summary ($((SECONDS - START)) s in all; log $LOG) ==="
printf '  %s\n' "${SUMMARY[@]}"
# the check fails when a phase did (its status says why)
! printf '%s\n' "${SUMMARY[@]}" | grep -qE 'FAILED|TIMED OUT'
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
