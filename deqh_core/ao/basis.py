"""AO layout: which atomic orbitals each element carries in a basis set.

Everything is read from PySCF's basis data, so any basis PySCF knows and any element it covers
works. The *padded* layout aligns the shells of all elements of a dataset by angular momentum so
that one block of width ``A`` (e.g. 14 = 3s2p1d for def2-SVP over H/C/N/O/F) holds any atom and
every slot has one fixed irrep, which is what equivariant output heads need.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import cache, cached_property
from typing import TYPE_CHECKING

import numpy as np

from deqh_core.util.errors import BasisError

if TYPE_CHECKING:
    from pyscf import gto

# PySCF is imported where it is used, so that precomputed layouts and tables work without it
# (benchmarks/gpu_check.sh on a bare GPU machine).

N_ATOMIC_NUMBERS = 119
"""Rows of per-element tables: atomic numbers 0..118, as PySCF's ``ELEMENTS``."""


def atomic_number(element: int | str) -> int:
    """Atomic number of ``element`` given as a number or a symbol (case-insensitive)."""
    if isinstance(element, (int, np.integer)):
        z = int(element)
        if not 0 < z < N_ATOMIC_NUMBERS:
            raise BasisError(f"unknown atomic number {z}")
        return z
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf.data.elements import charge

    try:
        z = charge(str(element).strip().capitalize())
    except KeyError:  # PySCF raises for most unknown symbols, returns 0 for a few (X...)
        z = 0
    if z <= 0:
        raise BasisError(f"unknown element symbol {element!r}")
    return int(z)


def symbol(z: int) -> str:
    """Element symbol of atomic number ``z``."""
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf.data.elements import ELEMENTS

    return ELEMENTS[atomic_number(z)]


def formula(atomic_numbers: Iterable[int]) -> str:
    """Hill formula of a molecule: C, then H, then alphabetical (``C2H6O``); without C all
    alphabetical (``H2O``)."""
    counts = Counter(symbol(int(z)) for z in atomic_numbers)
    first = [s for s in ("C", "H") if "C" in counts and s in counts]
    rest = sorted(s for s in counts if s not in first)
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in first + rest)


@cache
def element_shells(basis: str, z: int) -> tuple[int, ...]:
    """Angular momenta of the shells of element ``z`` in ``basis``, in PySCF's AO order.

    A generally contracted PySCF shell with ``nctr`` contractions counts as ``nctr`` shells,
    which is how PySCF lays out its AOs (contraction-major, then m).
    """
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf import gto

    sym = symbol(z)
    try:
        # Neutral atom; ECP cores hold an even number of electrons, so the parity is kept.
        mol = gto.M(atom=[[sym, (0.0, 0.0, 0.0)]], basis=basis, spin=z % 2, verbose=0)
    except Exception as err:  # PySCF raises several types (BasisNotFoundError, KeyError, ...)
        raise BasisError(
            f"basis {basis!r} has no functions for element {sym} (Z={z}): {err}"
        ) from None
    shells: list[int] = []
    for ib in range(mol.nbas):
        shells += [int(mol.bas_angular(ib))] * int(mol.bas_nctr(ib))
    if not shells:
        raise BasisError(f"basis {basis!r} has no functions for element {sym} (Z={z})")
    return tuple(shells)


def shells_n_ao(shells: Iterable[int]) -> int:
    return sum(2 * l + 1 for l in shells)


class AOLayout:
    """AO layout of one basis set over a set of elements.

    Attributes:
        basis: the basis-set name as PySCF understands it.
        elements: sorted atomic numbers covered.
        shells: ``{Z: (l, l, ...)}`` in PySCF's shell order.
        irreps: e3nn irreps of the padded block (``3x0e+2x1o+1x2e`` for def2-SVP/HCNOF);
            parity of a shell of angular momentum l is (-1)^l.
        width: ``A``, the padded number of AOs per atom (``irreps.dim``).
    """

    def __init__(self, basis: str, elements: Iterable[int | str]):
        self.basis = basis
        self.elements = tuple(sorted({atomic_number(e) for e in elements}))
        if not self.elements:
            raise BasisError("an AO layout needs at least one element")
        self.shells = {z: element_shells(basis, z) for z in self.elements}
        l_max = max(max(s) for s in self.shells.values())
        # slots per l: the largest number of shells of that l in any element
        self.shell_counts = tuple(
            max(s.count(l) for s in self.shells.values()) for l in range(l_max + 1)
        )
        self.width = sum(n * (2 * l + 1) for l, n in enumerate(self.shell_counts))

    @cached_property
    def irreps(self):
        """e3nn ``Irreps`` of the padded block; e3nn is imported only when asked for."""
        # torch-free module (spawned PySCF workers import it): torch code imported here
        from e3nn import o3

        return o3.Irreps([(n, (l, (-1) ** l)) for l, n in enumerate(self.shell_counts) if n > 0])

    def __repr__(self) -> str:
        els = ",".join(symbol(z) for z in self.elements)
        return f"AOLayout({self.basis!r}, [{els}], irreps={self.irreps})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AOLayout)
            and self.basis.lower() == other.basis.lower()
            and self.shells == other.shells
        )

    def __hash__(self) -> int:
        return hash((self.basis.lower(), self.elements))

    def n_ao(self, z: int) -> int:
        """Number of AOs of element ``z``."""
        return shells_n_ao(self.shells[self.check_element(z)])

    def check_element(self, z: int) -> int:
        if z not in self.shells:
            els = " ".join(symbol(e) for e in self.elements)
            raise BasisError(
                f"element {symbol(z)} (Z={z}) is not in this AO layout "
                f"({self.basis}: {els}); build the layout with every element of the data"
            )
        return z

    @cached_property
    def n_ao_table(self) -> np.ndarray:
        """``[119]`` AO count per atomic number, 0 for elements outside the layout."""
        table = np.zeros(N_ATOMIC_NUMBERS, dtype=np.int64)
        for z in self.elements:
            table[z] = self.n_ao(z)
        return table

    @cached_property
    def slot_l(self) -> np.ndarray:
        """``[A]`` angular momentum of every padded slot."""
        return np.concatenate(
            [np.full(n * (2 * l + 1), l) for l, n in enumerate(self.shell_counts) if n]
        )

    def slot_tables(self, convention: str = "pyscf") -> tuple[np.ndarray, np.ndarray]:
        """Gather tables from an atom's AOs in ``convention`` order to the padded model slots.

        Returns ``(ao, sign)``, both ``[119, A]``: padded model slot ``k`` of an atom of element
        ``Z`` holds ``sign[Z, k] * x[ao[Z, k]]`` of that atom's AO vector ``x``; ``ao`` is -1 for
        slots the element does not fill (and for elements outside the layout).
        """
        # torch-free module (spawned PySCF workers import it): torch code imported here
        from deqh_core.ao.convention import get_convention

        conv = get_convention(convention)
        ao = np.full((N_ATOMIC_NUMBERS, self.width), -1, dtype=np.int64)
        sign = np.zeros((N_ATOMIC_NUMBERS, self.width), dtype=np.int64)
        l_offset = np.cumsum([0] + [n * (2 * l + 1) for l, n in enumerate(self.shell_counts)])
        for z, shells in self.shells.items():
            seen = [0] * len(self.shell_counts)
            ao_offset = 0
            for l in shells:
                idx, sg = conv.shell(l)
                start = l_offset[l] + seen[l] * (2 * l + 1)
                ao[z, start : start + 2 * l + 1] = ao_offset + idx
                sign[z, start : start + 2 * l + 1] = sg
                seen[l] += 1
                ao_offset += 2 * l + 1
        return ao, sign


def mole(
    atomic_numbers: Iterable[int],
    positions: np.ndarray,
    basis: str,
    charge: int = 0,
    spin: int | None = None,
) -> gto.Mole:
    """A PySCF ``Mole`` from atomic numbers and positions ``[n_atoms, 3]`` in Å.

    ``spin=None`` picks the lowest spin the electron count allows, which is all the one-electron
    integrals (overlap, core Hamiltonian) need.
    """
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf import gto

    z = [int(x) for x in atomic_numbers]
    for el in set(z):
        element_shells(basis, el)  # clear error for an element the basis lacks
    if spin is None:
        spin = (sum(z) - charge) % 2
    atoms = [[el, tuple(map(float, r))] for el, r in zip(z, np.asarray(positions))]
    return gto.M(atom=atoms, basis=basis, unit="Angstrom", charge=charge, spin=spin, verbose=0)
