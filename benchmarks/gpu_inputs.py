"""Precomputed inputs, so that benchmarks and training run on a machine without PySCF.

deqh reads two things from PySCF: the AO layout (basis-set shells, ``deqh_core.ao.basis``) and
the diagonal reduction's on-site three-centre overlaps (``deqh_core.ao.reduction``); and the
labels and overlaps of a dataset come from PySCF integrals. A bare GPU machine has none of it
(benchmarks/gpu_check.sh), and PySCF's wheel (53 MB) does not fit beside the rest of what
travels there (64 MiB). So, here, with PySCF::

    python benchmarks/gpu_inputs.py            # writes benchmarks/gpu_inputs/ (about 20 MB)

writes ``basis.npz`` (def2-SVP shells and on-site tables of H, C, N, O, F; 30 kB) and one
deqh dataset per source (benchmarks/molecules.py): ``qm9-like.db`` (40 QM9-like molecules of
about 18 atoms), ``ethanol.db`` and ``uracil.db`` (5 thermal copies each), labelled with
PySCF's core Hamiltonian and overlap, which take milliseconds: a real, symmetric, equivariant
target a model can learn. There,
``gpu_inputs.use()`` serves the basis data to deqh when PySCF is missing (it does nothing when
PySCF is installed).
"""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "gpu_inputs"
BASIS = "def2-svp"
ELEMENTS = (1, 6, 7, 8, 9)
SOURCES = {"qm9-like": 40, "ethanol": 5, "uracil": 5}  # molecules per dataset file


def make(out: Path = DEFAULT, n_qm9: int = SOURCES["qm9-like"]) -> None:
    """Write ``basis.npz`` and the datasets ``<source>.db`` under ``out`` (needs PySCF)."""
    from molecules import SETS
    from pyscf.data.elements import ELEMENTS as SYMBOLS

    from deqh_core.ao.basis import element_shells, mole
    from deqh_core.ao.reduction import onsite_overlap_table
    from deqh_core.data.store import HamiltonianDB, MoleculeRecord

    out.mkdir(parents=True, exist_ok=True)
    arrays = {"symbols": np.array(SYMBOLS)}
    for z in ELEMENTS:
        arrays[f"shells/{z}"] = np.array(element_shells(BASIS, z))
        arrays[f"onsite/{z}"] = onsite_overlap_table(BASIS, z)
    np.savez_compressed(out / "basis.npz", basis=np.array(BASIS), **arrays)

    for name, count in SOURCES.items():
        path = dataset(name, out)
        path.unlink(missing_ok=True)
        with HamiltonianDB(path, "a") as db:
            db.set_recipe({"basis": BASIS, "label": "core Hamiltonian (int1e_kin + int1e_nuc)"})
            count = n_qm9 if name == "qm9-like" else count
            for k, (z, pos) in enumerate(SETS[name](count)):
                mol = mole(z, pos, BASIS)
                hcore = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
                overlap = mol.intor("int1e_ovlp")
                db.write(MoleculeRecord(k, z, pos, hcore, overlap, source=f"{name}#{k}"))
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"wrote {out} ({size:.1f} MB)")


def dataset(source: str, directory: Path = DEFAULT) -> Path:
    """The dataset file of ``source`` (``qm9-like``, ``ethanol``, ``uracil``)."""
    return Path(directory) / f"{source}.db"


def pyscf_available() -> bool:
    try:
        import pyscf  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def use(directory: Path = DEFAULT) -> bool:
    """Serve deqh the precomputed basis data of ``directory`` if PySCF is missing (True then).

    Replaces ``deqh_core.ao.basis.element_shells`` / ``symbol`` and
    ``deqh_core.ao.reduction.onsite_overlap_table`` with lookups in ``basis.npz``: values PySCF
    computed, for the def2-SVP H/C/N/O/F layout only (anything else is a clear error).
    """
    if pyscf_available():
        return False
    path = Path(directory) / "basis.npz"
    if not path.is_file():
        sys.exit(f"{path} is missing and PySCF is not installed: run `python {__file__}` first")
    import deqh_core.ao.basis as basis
    import deqh_core.ao.reduction as reduction
    from deqh_core.util.errors import BasisError

    with np.load(path, allow_pickle=False) as f:
        name = str(f["basis"])
        symbols = [str(s) for s in f["symbols"]]
        shells = {z: tuple(int(l) for l in f[f"shells/{z}"]) for z in ELEMENTS}
        tables = {z: f[f"onsite/{z}"] for z in ELEMENTS}
    for table in tables.values():
        table.setflags(write=False)

    def check(requested: str, z: int) -> int:
        if requested.lower() != name or z not in shells:
            raise BasisError(
                f"no PySCF here, and {path} holds {name} for Z in {ELEMENTS} only, "
                f"not {requested} for Z={z}"
            )
        return z

    basis.element_shells = lambda requested, z: shells[check(requested, z)]
    basis.symbol = lambda z: symbols[basis.atomic_number(z)]
    reduction.onsite_overlap_table = lambda requested, z: tables[check(requested, z)]
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT)
    parser.add_argument("--qm9", type=int, default=SOURCES["qm9-like"], help="QM9-like count")
    args = parser.parse_args()
    make(args.out, args.qm9)


if __name__ == "__main__":
    main()
