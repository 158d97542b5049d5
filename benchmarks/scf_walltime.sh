#!/usr/bin/env bash
# Total wall time of a B3LYP/def2-SVP SCF started from a model (default: the shipped qh9-small;
# H0 + inference + SCF on one clock) against PySCF's minao, sap and huckel starts, each on one
# thread, on QH9-stable-id *val* molecules of 6 to 18 atoms (the model trained on train
# molecules of at most 10 atoms): the tables of docs/pretrained.md. Then the same with the
# model's H0 built exactly as in training (--h0 exact, with the SCF's own grid and integrals)
# against minao alone. About 30 minutes on an idle 2-core machine.
#   bash benchmarks/scf_walltime.sh [MODEL] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qh9-small}
OUT=${2:-runs/scf-walltime}
# the first val molecules (ascending QH9-stable id) of 6, 9, 12, 13, 14, 15, 16 and 18 atoms
IDS=7,35,88,21,46,69,152,20,258,132,350,287,461,553,648
load=$(cut -d' ' -f1 /proc/loadavg)
if [ "${load%%.*}" -gt 0 ]; then
    echo "scf_walltime: the machine is busy (load $load): timings will be off" >&2
fi
.venv/bin/deqh data qh9 --part val --ids "$IDS" --xyz "$OUT/val.xyz"
.venv/bin/deqh scf "$MODEL" "$OUT/val.xyz" --out "$OUT/fast" --workers 1 --no-progress
.venv/bin/deqh scf "$MODEL" "$OUT/val.xyz" --out "$OUT/exact" --h0 exact --guess minao \
    --workers 1 --no-progress
