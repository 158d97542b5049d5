"""Orbitals of a Hamiltonian: the generalised eigenproblem ``H C = S C eps``, electron counts
and closed-shell densities, with clear errors for what cannot be solved.

Every orbital energy, orbital and density in deqh comes from here (float64 NumPy, one molecule
at a time; ``[n_ao, n_ao]`` matrices in any one AO order, Hartree).

Electron counts follow PySCF: atoms whose basis set comes with an effective core potential
(ECP; the def2 sets from Rb on) carry ``Z - n_core`` electrons, exactly as PySCF's
``Mole.nelectron`` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import numpy as np
import scipy.linalg

from deqh_core.ao.basis import symbol
from deqh_core.util.errors import DataError

LINEAR_DEPENDENCE = 1e-8
"""Smallest overlap eigenvalue accepted. Below it the AO basis is (numerically) linearly
dependent, e.g. atoms on top of each other, and ``H C = S C eps`` has no meaningful solution.
(PySCF's own threshold for removing linear dependencies has the same value.)"""


class SingularOverlapError(DataError):
    """An overlap matrix that is singular or too close to singular to solve with."""


class ElectronCountError(DataError):
    """An electron count that no closed-shell occupation of the basis can hold."""


@cache
def ecp_core_electrons(basis: str, z: int) -> int:
    """Electrons that ``basis``'s effective core potential replaces on element ``z`` (0 when
    the basis has no ECP for it), as PySCF counts them (``Mole.atom_nelec_core``)."""
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf.gto.basis import load_ecp

    try:
        ecp = load_ecp(basis, symbol(int(z)))
    except Exception:  # no ECP library of this name: an all-electron basis
        return 0
    return int(ecp[0]) if ecp else 0


def electron_count(atomic_numbers: Iterable[int], basis: str, charge: int = 0) -> int:
    """Electrons of a molecule in ``basis``: ``sum(Z - n_core) - charge`` (ECP-aware, equal to
    PySCF's ``Mole.nelectron`` with the same basis and ECPs)."""
    z = [int(x) for x in atomic_numbers]
    return sum(z) - sum(ecp_core_electrons(basis, x) for x in z) - int(charge)


def occupied_count(
    atomic_numbers: Iterable[int], basis: str, charge: int = 0, n_ao: int | None = None
) -> int:
    """Doubly occupied orbitals of a closed-shell molecule (ECP-aware, see
    :func:`electron_count`).

    Raises:
        ElectronCountError: no electrons, an odd count, or more pairs than ``n_ao`` orbitals.
    """
    z = [int(x) for x in atomic_numbers]
    n = electron_count(z, basis, charge)
    what = f"{n} electrons (charge {int(charge):+d}".replace("+0", "0")
    core = sum(z) - int(charge) - n
    what += f", {core} in ECP cores)" if core else ")"
    if n <= 0:
        raise ElectronCountError(f"{what}: a molecule needs at least two electrons")
    if n % 2:
        raise ElectronCountError(f"{what}: only closed shells (an even count) are supported")
    if n_ao is not None and n // 2 > n_ao:
        raise ElectronCountError(
            f"{what}: {n // 2} doubly occupied orbitals, but {basis} gives only {n_ao}"
        )
    return n // 2


def check_overlap(overlap: np.ndarray) -> float:
    """The smallest eigenvalue of ``overlap``; raises :class:`SingularOverlapError` below
    :data:`LINEAR_DEPENDENCE`."""
    s = np.asarray(overlap, dtype=np.float64)
    if not np.isfinite(s).all():
        raise SingularOverlapError("the overlap matrix contains NaN or inf")
    smallest = float(np.linalg.eigvalsh(s)[0])
    if smallest < LINEAR_DEPENDENCE:
        raise SingularOverlapError(
            f"the overlap matrix is singular (smallest eigenvalue {smallest:.1e} < "
            f"{LINEAR_DEPENDENCE:g}): the basis functions are linearly dependent, e.g. atoms "
            "(nearly) on top of each other"
        )
    return smallest


def solve(hamiltonian: np.ndarray, overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``H C = S C eps`` in float64: ``eps [n_ao]`` ascending (Hartree) and ``C [n_ao, n_ao]``
    (column ``i`` is orbital ``i``, ``C.T S C = 1``). ``H`` is symmetrised first (a
    prediction may not be exactly symmetric; a label is unchanged).

    Raises:
        DataError: ``H`` has NaN or inf.
        SingularOverlapError: ``S`` is not positive definite.
    """
    h = np.asarray(hamiltonian, dtype=np.float64)
    if not np.isfinite(h).all():
        raise DataError("the Hamiltonian contains NaN or inf")
    try:
        return scipy.linalg.eigh((h + h.T) / 2, np.asarray(overlap, dtype=np.float64))
    except (np.linalg.LinAlgError, ValueError) as err:
        raise SingularOverlapError(
            f"cannot solve H C = S C eps: the overlap matrix is not positive definite ({err})"
        ) from None


def orbital_energies(hamiltonian: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """The eigenvalues of ``H C = S C eps`` only, ascending (Hartree); see :func:`solve`."""
    h = np.asarray(hamiltonian, dtype=np.float64)
    if not np.isfinite(h).all():
        raise DataError("the Hamiltonian contains NaN or inf")
    try:
        return scipy.linalg.eigh((h + h.T) / 2, overlap, eigvals_only=True)
    except (np.linalg.LinAlgError, ValueError) as err:
        raise SingularOverlapError(
            f"cannot solve H C = S C eps: the overlap matrix is not positive definite ({err})"
        ) from None


def density(hamiltonian: np.ndarray, overlap: np.ndarray, n_electrons: int) -> np.ndarray:
    """Closed-shell aufbau density ``D = 2 C_occ C_occᵀ`` (``[n_ao, n_ao]``) of ``H``'s
    orbitals (:func:`solve`); ``n_electrons`` even."""
    if n_electrons % 2 or n_electrons <= 0:
        raise ElectronCountError(f"{n_electrons} electrons: only closed shells are supported")
    _, c = solve(hamiltonian, overlap)
    if n_electrons // 2 > c.shape[1]:
        raise ElectronCountError(
            f"{n_electrons} electrons need {n_electrons // 2} orbitals; the basis has {c.shape[1]}"
        )
    occ = c[:, : n_electrons // 2]
    return 2.0 * occ @ occ.T
