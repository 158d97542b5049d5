"""GPU labels (``--engine gpu4pyscf``) against PySCF's CPU labels, and molecules per hour.

On a machine with a CUDA GPU, PySCF, gpu4pyscf and qm9pack: labels the first QH9-stable-id
*train* molecules of each size band with both engines (QH9's recipe) and prints, per molecule,
the largest difference of the converged Fock matrix, of the stored minao ``H0`` and of the
energy, with both wall times; then the GPU's molecules per hour. Exits 1 when a difference
exceeds the tolerance (``--tol``, Hartree; default 1e-5, the merge tolerance of two labels of
one molecule).

    python benchmarks/gpu_labels.py [--atoms 9,12,15,18] [--tol 1e-5]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from deqh_core.data.generate import label
from deqh_core.data.qm9 import qh9_tasks, qm9_table, select_ids
from deqh_core.data.recipe import Recipe, check_engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", default="9,12,15,18", help="one molecule of each size")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    check_engine("gpu4pyscf")
    table = qm9_table()
    train = select_ids(table.n_atoms, "stable-id", "train", None, None, None)
    sizes = [int(a) for a in args.atoms.split(",")]
    ids = [int(next(i for i in train if table.n_atoms[i] == n)) for n in sizes]
    recipe = Recipe()
    label(qh9_tasks(table, ids[:1])[0], recipe, engine="gpu4pyscf")  # warm up CUDA and caches
    worst, gpu_seconds = 0.0, 0.0
    print("id  atoms  max|dF| (Ha)  max|dH0| (Ha)  |dE| (Ha)  CPU s  GPU s  cycles CPU/GPU")
    for task in qh9_tasks(table, ids):
        cpu = label(task, recipe)
        gpu = label(task, recipe, engine="gpu4pyscf")
        d_f = float(np.abs(cpu.hamiltonian - gpu.hamiltonian).max())
        d_h0 = float(np.abs(cpu.h0_minao - gpu.h0_minao).max())
        d_e = abs(cpu.energy - gpu.energy)
        worst = max(worst, d_f, d_h0, d_e)
        gpu_seconds += gpu.wall_time
        print(
            f"{task.id:<4}{len(task.atomic_numbers):>6}  {d_f:12.2e}  {d_h0:13.2e}  {d_e:9.2e}"
            f"  {cpu.wall_time:5.1f}  {gpu.wall_time:5.1f}  {cpu.n_cycles}/{gpu.n_cycles}"
        )
    print(f"GPU: {len(ids) / gpu_seconds * 3600:.0f} molecules/h (these sizes, one GPU)")
    print(f"largest difference {worst:.2e} Ha (tolerance {args.tol:g})")
    return int(worst > args.tol)


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - start:.0f} s")
    sys.exit(code)
