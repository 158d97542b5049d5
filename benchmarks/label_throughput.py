"""Labelling and H0 throughput: molecules per hour per worker, local process pool vs Dask.

On the same QH9-stable-id *train* molecules (QH9's recipe: b3lyp5, def2-SVP, grid 3,
conv_tol 1e-9), in one run on an idle machine:

* the plain PySCF SCF of the recipe, one process (the cost of a label without deqh);
* ``deqh data qh9``'s labeller (``generate``: label + minao H0 + write) with 1 and 2 workers, on
  the local process pool and on a loopback Dask ``LocalCluster`` (``--scheduler local``, cluster
  start included);
* the minao H0 computed afterwards (``deqh data prior``'s ``PriorCache.fill``) with 1 and 2
  workers, local and Dask.

Storing H0 while labelling costs the label's time minus the plain SCF's (a copy of a matrix
PySCF builds anyway) and one float64 matrix of disk per molecule; computing it afterwards costs
one Fock build of the minao density per molecule, a second pass over the data.

    .venv/bin/python benchmarks/label_throughput.py [--atoms 11-12] [--molecules 8] [--out DIR]

About 8 minutes on an idle 2-core machine with the defaults. Writes DIR/throughput.md and
DIR/throughput.json (default runs/label-throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from pyscf import lib

from deqh_core.data.generate import generate
from deqh_core.data.qm9 import qh9_tasks, qm9_table, select_ids
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import HamiltonianDB
from deqh_core.solvers.prior import PriorCache

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def main() -> None:
    if any(os.environ.get(v) != "1" for v in THREAD_VARS):
        # one thread per worker, this process included: rerun with the variables set (they
        # must be set before numpy and PySCF load their BLAS and OpenMP runtimes)
        env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", default="11-12", help="atom-count range a-b of the molecules")
    parser.add_argument("--molecules", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/label-throughput"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"label_throughput: the machine is busy (load {load:.2f}): timings will be off")
    lo, hi = (int(a) for a in args.atoms.split("-"))
    table = qm9_table()
    train = select_ids(table.n_atoms, "stable-id", "train", None, None, None)
    ids = [int(i) for i in train if lo <= table.n_atoms[i] <= hi][: args.molecules]
    tasks = qh9_tasks(table, ids)
    recipe = Recipe()  # QH9's
    args.out.mkdir(parents=True, exist_ok=True)
    n = len(tasks)
    rows: list[dict] = []

    def row(what: str, workers: int, seconds: float, **extra) -> None:
        rate = n / seconds * 3600 / workers
        rows.append(dict(what=what, workers=workers, seconds=seconds, per_hour_per_worker=rate))
        rows[-1].update(extra)
        print(f"{what:<44} workers {workers}: {seconds:7.1f} s, {rate:6.0f} molecules/h/worker")

    with lib.with_omp_threads(1):
        start = time.perf_counter()
        for t in tasks:
            mf = recipe.rks(recipe.mole(t.atomic_numbers, t.positions))
            mf.kernel()
            assert mf.converged, t.source
        row("plain PySCF SCF (no deqh, no H0)", 1, time.perf_counter() - start)

    labelled = None
    for scheduler in (None, "local"):
        for workers in (1, 2):
            path = args.out / f"label-{scheduler or 'pool'}-{workers}.db"
            path.unlink(missing_ok=True)
            start = time.perf_counter()
            summary = generate(
                tasks, path, recipe, workers=workers, progress=False, scheduler=scheduler
            )
            seconds = time.perf_counter() - start
            assert (summary.written, summary.failed) == (n, 0), summary
            engine = "Dask LocalCluster" if scheduler else "process pool"
            row(f"label + H0 + write, {engine}", workers, seconds)
            labelled = labelled or path

    structures = [(t.id, t.atomic_numbers, t.positions) for t in tasks]
    for scheduler in (None, "local"):
        for workers in (1, 2):
            folder = args.out / f"h0-{scheduler or 'pool'}-{workers}"
            folder.mkdir(exist_ok=True)
            for old in folder.glob("deqh-h0-*"):
                old.unlink()
            cache = PriorCache(folder / "none.db", recipe, "minao")
            start = time.perf_counter()
            assert cache.fill(structures, workers, False, scheduler=scheduler) == n
            engine = "Dask LocalCluster" if scheduler else "process pool"
            row(f"minao H0 afterwards, {engine}", workers, time.perf_counter() - start)

    with HamiltonianDB(labelled) as db:
        label_bytes = np.mean([db.get(i).hamiltonian.nbytes for i in ids])
        h0_bytes = np.mean([db.prior(i, "minao").nbytes for i in ids])
        n_atoms = np.mean([len(db.get(i).atomic_numbers) for i in ids])
    by = {(r["what"], r["workers"]): r["seconds"] / n for r in rows}
    plain = by[("plain PySCF SCF (no deqh, no H0)", 1)]
    stored = by[("label + H0 + write, process pool", 1)] - plain
    after = by[("minao H0 afterwards, process pool", 1)]
    summary = {
        "ids": ids,
        "atoms": float(n_atoms),
        "rows": rows,
        "seconds_per_molecule": {
            "plain_scf": plain,
            "storing_h0_while_labelling": stored,
            "h0_afterwards": after,
        },
        "bytes_per_molecule": {"label": float(label_bytes), "h0": float(h0_bytes)},
        "load_at_start": load,
    }
    (args.out / "throughput.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"{n} QH9-stable-id train molecules of {lo}-{hi} atoms (mean {n_atoms:.1f}), QH9's "
        "recipe, one thread per worker:",
        "",
        "| what | workers | wall time (s) | molecules / h / worker |",
        "|---|---|---|---|",
        *(
            "| {what} | {workers} | {seconds:.1f} | {per_hour_per_worker:.0f} |".format(**r)
            for r in rows
        ),
        "",
        f"Storing H0 while labelling: {stored:+.2f} s per molecule (label + H0 + write minus "
        f"the plain SCF; {h0_bytes / 1e3:.0f} kB of disk, as much as the label); computing it "
        f"afterwards: {after:.2f} s per molecule ({after / plain:.0%} of a label).",
    ]
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
