"""A trained model as PySCF's initial guess: its Hamiltonian and density for a PySCF molecule.

A model with the ``minao`` prior reads ``H0 = F[D_minao]``, one Fock build, which a guess must
pay for before the SCF starts. Two ways to build it (:data:`H0_MODES`):

* ``fast`` (default): density-fitted J/K on a coarse grid, with its own small setup: cheaper
  than one cycle of the SCF it starts, and as good a start (docs/pretrained.md measures both);
* ``exact``: as in training; with the SCF's own mean-field object when that makes the same
  ``H0``, whose grid and integrals PySCF keeps (``mf.grids``, ``mf._eri``) for the SCF::

    guess = ModelGuess(load_model("qh9-small"))
    mf = dft.RKS(mol, xc="b3lyp5")
    dm, info = guess.density(mf)          # H0, the model, PySCF's eig/occ/rdm1
    mf.kernel(dm0=dm)

:mod:`deqh_core.pyscf` is the public face of this; ``deqh scf`` times its prediction-started
SCF through it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from pyscf import dft, gto

from deqh_core.ao.basis import formula, symbol
from deqh_core.data.recipe import Recipe
from deqh_core.inference.loaded import LoadedModel
from deqh_core.solvers.prior import H0_FIELDS, prior_with
from deqh_core.util.errors import DataError, DeqhError

H0_MODES = ("fast", "exact")
"""How a guess builds a prior model's ``H0``: ``fast``, with density-fitted J/K on a coarse DFT
grid (its own setup, a fraction of one SCF cycle; it differs from the exact ``H0`` the model
trained on by about 1e-6 Ha on average, 2e-4 Ha at most on QH9 molecules, well inside the
model's own error), or ``exact``, as in training, with the SCF's own mean-field object when
that makes the same ``H0`` (its grid and integrals are then built once for both)."""

FAST_GRID_LEVEL = 1
"""PySCF DFT grid level of a ``fast`` ``H0`` (QH9's recipe uses 3)."""


class OutOfDomainWarning(UserWarning):
    """A molecule unlike the model's training data (the prediction may be poor)."""


class UnconvergedWarning(UserWarning):
    """The DEQ did not reach its tolerance for a molecule (its last iterate is used)."""


@dataclass
class GuessInfo:
    """How one guess was made: seconds of ``H0`` and of the model, the DEQ's state, and how
    the molecule lies outside the training domain (empty: inside)."""

    prior_seconds: float = 0.0
    model_seconds: float = 0.0
    deq_nstep: int | None = None
    deq_residual: float | None = None  # Hartree
    deq_converged: bool | None = None
    h0: str | None = None  # how H0 was built: "fast", "shared" (the SCF's own mf), "separate"
    warnings: list[str] = field(default_factory=list)


class ModelGuess:
    """A loaded model (:func:`~deqh_core.inference.loaded.load_model`) that predicts the
    Hamiltonian of a PySCF molecule and the density PySCF starts an SCF from; ``recipe``: the
    labels' recipe its ``H0`` is built with (default: the checkpoint's,
    :meth:`~deqh_core.inference.loaded.LoadedModel.recipe`); ``h0``: how (:data:`H0_MODES`)."""

    def __init__(self, loaded: LoadedModel, recipe: Recipe | None = None, h0: str = "fast"):
        if h0 not in H0_MODES:
            raise DeqhError(f"h0 must be one of {', '.join(H0_MODES)}, not {h0!r}")
        self.loaded, self.h0 = loaded, h0
        self.recipe: Recipe = recipe or loaded.recipe()[0]  # the labels' recipe
        loaded.report_deq_failures()  # a molecule whose iterate breaks is flagged, not raised

    def __repr__(self) -> str:
        return f"ModelGuess({self.loaded.path.name}: {self.loaded.name}, {self.recipe.basis})"

    # ------------------------------------------------------------------------------------------
    # what the model can take

    def check(self, mol) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The molecule's atomic numbers ``[n]``, positions ``[n, 3]`` (Å) and the ways it lies
        outside the training domain.

        Raises:
            DataError: what the model cannot predict: an open shell, another basis, Cartesian
                d functions, an element it never saw.
        """
        layout = self.loaded.layout
        if mol.spin != 0:
            raise DataError(
                f"open shell (mol.spin = {mol.spin}): the model predicts closed-shell "
                "(restricted) Kohn-Sham Hamiltonians"
            )
        basis = _basis_name(mol)
        if basis is None or _normal(basis) != _normal(layout.basis):
            raise DataError(
                f"basis {mol.basis!r}: the model predicts in {layout.basis!r}; build the "
                f"molecule with basis={layout.basis!r}"
            )
        if mol.cart:
            raise DataError(
                "Cartesian d functions (mol.cart = True): the model predicts in "
                "spherical ones; build the molecule with cart=False"
            )
        z = np.array([gto.charge(mol.atom_pure_symbol(i)) for i in range(mol.natm)])
        domain = self.loaded.domain
        known = set(layout.elements) & set(domain.elements if domain else layout.elements)
        bad = sorted({int(x) for x in z} - known)
        if bad:
            raise DataError(
                f"element {', '.join(f'{symbol(x)} (Z={x})' for x in bad)}: the model was "
                f"trained on {' '.join(symbol(x) for x in sorted(known))} only"
            )
        positions = mol.atom_coords(unit="Angstrom")
        found = [] if domain is None else domain.check(z, positions, mol.charge)
        return z, positions, found

    # ------------------------------------------------------------------------------------------
    # the guess

    def hamiltonian(self, mf) -> tuple[np.ndarray, GuessInfo]:
        """The model's ``H`` (``[n_ao, n_ao]``, PySCF AO order, Hartree) for ``mf.mol``.

        ``H0`` is built as :attr:`h0` says (:data:`H0_MODES`); ``exact`` uses ``mf`` itself
        when ``mf`` makes the same ``H0`` as the model's labels' recipe (restricted Kohn-Sham
        with the same functional and grid level, no density fitting), so the SCF that follows
        reuses its grid and integrals. Out-of-domain molecules and unconverged DEQ solves warn
        (:class:`OutOfDomainWarning`, :class:`UnconvergedWarning`).
        """
        z, positions, found = self.check(mf.mol)
        info = GuessInfo(warnings=found)
        for text in found:
            warnings.warn(f"{_formula(mf.mol)}: {text}", OutOfDomainWarning, stacklevel=4)
        h0 = None
        if self.loaded.h0_kind is not None:
            t0 = time.perf_counter()
            if self.h0 == "fast":
                builder, info.h0 = fast_rks(self.recipe, mf.mol), "fast"
            elif self._same_h0(mf):
                builder, info.h0 = mf, "shared"
            else:
                builder, info.h0 = self.recipe.rks(mf.mol), "separate"
            h0 = prior_with(builder, self.loaded.h0_kind)
            info.prior_seconds = time.perf_counter() - t0
        recipe = self.recipe.model_copy(update={"charge": int(mf.mol.charge)})
        try:
            item = self.loaded.item(z, positions, recipe, h0=h0)
        except DeqhError as err:
            raise type(err)(f"{_formula(mf.mol)}: {err}") from None
        h, info.model_seconds, diagnostics = self.loaded.predict(item)
        if h.shape != (mf.mol.nao, mf.mol.nao):
            raise DataError(
                f"the model's H is {h.shape[0]}x{h.shape[0]} but the molecule has "
                f"{mf.mol.nao} AOs in {mf.mol.basis!r}"
            )
        if diagnostics is not None:
            info.deq_nstep = int(diagnostics.nstep.reshape(-1)[0])
            info.deq_residual = float(diagnostics.abs_residual.reshape(-1)[0])
            info.deq_converged = bool(diagnostics.converged.reshape(-1)[0])
            if not info.deq_converged:
                warnings.warn(
                    f"{_formula(mf.mol)}: the DEQ stopped at residual {info.deq_residual:.1e} "
                    "Ha, above its tolerance; its last iterate is the guess",
                    UnconvergedWarning,
                    stacklevel=4,
                )
        return h, info

    def density(self, mf) -> tuple[np.ndarray, GuessInfo]:
        """The closed-shell density ``[n_ao, n_ao]`` of the model's ``H`` for ``mf.mol``:
        PySCF's own ``mf.eig``, ``mf.get_occ`` and ``mf.make_rdm1`` on it, ready for
        ``mf.kernel(dm0=...)``."""
        h, info = self.hamiltonian(mf)
        mo_energy, mo_coeff = mf.eig(h, mf.get_ovlp())
        mo_occ = mf.get_occ(mo_energy, mo_coeff)
        return mf.make_rdm1(mo_coeff, mo_occ), info

    def _same_h0(self, mf) -> bool:
        """Whether ``mf`` builds the ``H0`` the model learned from (then it is built with it)."""
        if not isinstance(mf, dft.rks.RKS) or getattr(mf, "with_df", None) is not None:
            return False
        given = {"xc": str(mf.xc).lower(), "grid_level": mf.grids.level, "basis": self.recipe.basis}
        return all(str(getattr(self.recipe, f)).lower() == str(given[f]).lower() for f in H0_FIELDS)


def fast_rks(recipe: Recipe, mol):
    """The recipe's RKS with density-fitted J/K (PySCF's default auxiliary basis) on DFT grid
    level :data:`FAST_GRID_LEVEL`: the ``fast`` way to build a guess's ``H0``."""
    mf = recipe.rks(mol).density_fit()
    mf.grids.level = FAST_GRID_LEVEL
    return mf


def _basis_name(mol) -> str | None:
    """The one basis of every atom of ``mol`` (a name), or None for a mixed or custom one."""
    basis = mol.basis
    if isinstance(basis, str):
        return basis
    if isinstance(basis, dict) and all(isinstance(b, str) for b in basis.values()):
        names = {_normal(b): b for b in basis.values()}
        if len(names) == 1:
            return next(iter(names.values()))
    return None


def _normal(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def _formula(mol) -> str:
    return formula([gto.charge(mol.atom_pure_symbol(i)) for i in range(mol.natm)])
