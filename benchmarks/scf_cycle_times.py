"""Where a model-started SCF's time goes, against PySCF's minao start: for each molecule of an
xyz file, the two starts alternated ``--repeat`` times in one process on one thread (QH9's
recipe), each run's guess time (the model's: H0 + inference), its first segment (grid, two-
electron integrals, first Fock build and cycle) and every further cycle, from PySCF's callback.

    python benchmarks/scf_cycle_times.py runs/scf-walltime/val.xyz --frames 13,14 --repeat 2

Repeated identical runs show how far single-run timings scatter, against the seconds a better
start saves.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pyscf import lib

from deqh_core.data.recipe import Recipe
from deqh_core.data.xyz import read_xyz
from deqh_core.inference.guess import ModelGuess
from deqh_core.inference.loaded import load_model


def timed_run(recipe: Recipe, mol, start: str, guess: ModelGuess) -> str:
    mf = recipe.rks(mol)
    stamps: list[float] = []
    mf.callback = lambda envs: stamps.append(time.perf_counter())
    t0 = time.perf_counter()
    if start == "model":
        dm0, info = guess.density(mf)
        extra = f"  (H0 {info.prior_seconds:.2f} s, inference {info.model_seconds:.2f} s)"
    else:
        dm0, extra = mf.get_init_guess(key=start), ""
    t1 = time.perf_counter()
    mf.kernel(dm0=dm0)
    t2 = time.perf_counter()
    segments = np.diff([t1, *stamps])
    return (
        f"{start:6s} {len(stamps):2d} cycles  guess {t1 - t0:5.2f}  SCF {t2 - t1:6.2f}  total "
        f"{t2 - t0:6.2f} s  E {mf.e_tot:.9f}{extra}\n"
        f"       first segment {segments[0]:.2f} s, then "
        + " ".join(f"{s:.2f}" for s in segments[1:])
        + f", after the last {t2 - stamps[-1]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("xyz")
    parser.add_argument("--frames", default="0", help="comma-separated frame indices")
    parser.add_argument("--model", default="qh9-small", help="shipped name or checkpoint")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    frames = read_xyz(args.xyz)
    recipe = Recipe()  # QH9's: B3LYP (b3lyp5), def2-SVP, grid 3, conv_tol 1e-9
    guess = ModelGuess(load_model(args.model))
    with lib.with_omp_threads(1):
        for index in (int(i) for i in args.frames.split(",")):
            frame = frames[index]
            mol = recipe.mole(frame.atomic_numbers, frame.positions)
            print(f"{frame.comment} ({mol.natm} atoms, {mol.nao} AOs)", flush=True)
            for _ in range(args.repeat):
                for start in ("minao", "model"):
                    print(timed_run(recipe, mol, start, guess), flush=True)


if __name__ == "__main__":
    main()
