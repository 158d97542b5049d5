"""The DFT recipe of Hamiltonian labels and how to run it with PySCF."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deqh_core.ao.basis import symbol
from deqh_core.util.errors import ConfigError, DataError, validation_message
from deqh_core.util.files import parse_yaml, read_settings

_INIT_GUESSES = ("minao", "atom", "huckel", "mod_huckel", "hcore", "1e", "sap", "vsap")
# where an SCF runs: PySCF on the CPU, or the same SCF on a CUDA GPU through gpu4pyscf
ENGINES = ("pyscf", "gpu4pyscf")
GPU4PYSCF_HINT = "pip install gpu4pyscf-cuda12x (or -cuda11x; needs a CUDA GPU)"


def check_engine(engine: str) -> None:
    """Fail fast, before any work: an unknown engine, or gpu4pyscf not importable."""
    if engine not in ENGINES:
        raise DataError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "gpu4pyscf":
        try:
            import gpu4pyscf  # noqa: F401  (an optional extra, for GPU machines only)
        except ImportError as err:
            raise DataError(
                f"--engine gpu4pyscf: cannot import gpu4pyscf ({err}); {GPU4PYSCF_HINT}"
            ) from None


def minao_density(mol) -> np.ndarray:
    """PySCF's (CPU) minao guess density of ``mol`` (``[n_ao, n_ao]``), the start of the
    labels' SCF and the density of the minao prior; gpu4pyscf's own differs (block-diagonal
    per atom), so the GPU engine is given this one."""
    # PySCF only where it computes: models run without it (docs/architecture.md)
    from pyscf.scf.hf import init_guess_by_minao

    return init_guess_by_minao(mol)


def to_host(x) -> np.ndarray:
    """A float64 NumPy copy of a PySCF (NumPy) or gpu4pyscf (CuPy) array."""
    if type(x).__module__.split(".")[0] == "cupy":
        x = x.get()
    return np.array(x, dtype=np.float64)


class Recipe(BaseModel):
    """The DFT recipe of the labels; stored in every file so that labels are never mixed.

    The default is the QH9 recipe: B3LYP/def2-SVP on grid level 3, with the SCF tolerances of
    QH9's own generation scripts (the paper quotes 1e-13, which is below PySCF's numerical
    noise). ``xc`` is ``"b3lyp5"`` because PySCF >= 2.3 changed ``"b3lyp"`` to use VWN-RPA
    (VWN3), while QH9-stable was labelled with PySCF 2.2.1, whose ``"b3lyp"`` is today's
    ``"b3lyp5"`` (VWN5). Basis sets that define ECPs (def2 beyond Kr) get them automatically.
    Only closed-shell RKS labels are supported so far (``spin`` must be 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    xc: str = "b3lyp5"
    basis: str = "def2-svp"
    grid_level: int = Field(3, ge=0, le=9)
    conv_tol: float = Field(1e-9, gt=0)  # Hartree
    conv_tol_grad: float = Field(3.16e-5, gt=0)
    max_cycle: int = Field(100, ge=1)
    charge: int = 0
    spin: int = Field(0, ge=0)  # 2S = N_alpha - N_beta
    init_guess: str = "minao"

    @field_validator("xc")
    @classmethod
    def _known_xc(cls, xc: str) -> str:
        # PySCF only where it computes: models run without it (docs/architecture.md)
        from pyscf.dft import libxc

        try:
            libxc.parse_xc(xc)
        except (KeyError, ValueError) as err:
            raise ValueError(f"PySCF does not know the functional {xc!r} ({err})") from None
        return xc

    @field_validator("init_guess")
    @classmethod
    def _known_guess(cls, guess: str) -> str:
        # PySCF silently falls back to minao for unknown names; refuse them instead.
        if guess.lower() not in _INIT_GUESSES:
            raise ValueError(f"init_guess must be one of {', '.join(_INIT_GUESSES)}")
        return guess.lower()

    @classmethod
    def from_meta(cls, meta: dict) -> Recipe:
        """The recipe of a file's ``meta`` entry (extra keys such as the PySCF version are
        ignored)."""
        return cls(**{k: v for k, v in meta.items() if k in cls.model_fields})

    def mole(self, atomic_numbers: Sequence[int], positions: np.ndarray):
        """PySCF ``Mole`` of a molecule (positions ``[n_atoms, 3]`` in Å) with this recipe's
        basis, ECPs, charge and spin."""
        # PySCF only where it computes: models run without it (docs/architecture.md)
        from pyscf import gto
        from pyscf.gto.basis import load_ecp

        symbols = [symbol(int(z)) for z in atomic_numbers]
        ecp = {}
        for sym in set(symbols):
            try:
                if load_ecp(self.basis, sym):
                    ecp[sym] = self.basis
            except Exception:  # no ECP library under this name: an all-electron basis
                pass
        return gto.M(
            atom=[(s, tuple(map(float, p))) for s, p in zip(symbols, positions)],
            basis=self.basis,
            ecp=ecp,
            charge=self.charge,
            spin=self.spin,
            unit="Angstrom",
            verbose=0,
        )

    def rks(self, mol, engine: str = "pyscf"):
        """A PySCF RKS object of ``mol`` set up with this recipe (not yet run); with
        ``engine="gpu4pyscf"`` the same object moved to the GPU (``mf.to_gpu()``: CuPy arrays,
        see :func:`to_host`)."""
        # PySCF only where it computes: models run without it (docs/architecture.md)
        from pyscf import dft

        mf = dft.RKS(mol)
        mf.xc = self.xc
        mf.grids.level = self.grid_level
        mf.conv_tol = self.conv_tol
        mf.conv_tol_grad = self.conv_tol_grad
        mf.max_cycle = self.max_cycle
        mf.init_guess = self.init_guess
        mf.verbose = 0
        if engine != "pyscf":
            check_engine(engine)
            mf = mf.to_gpu()
        return mf

    def as_meta(self, engine: str = "pyscf") -> dict:
        """The recipe as stored in a file's ``meta`` table: all fields plus the PySCF version,
        units, AO order and what the matrix is; and gpu4pyscf's version for labels made on a
        GPU (so a file never mixes CPU and GPU labels)."""
        # PySCF only where it computes: models run without it (docs/architecture.md)
        import pyscf

        meta = {} if engine == "pyscf" else {"engine": f"{engine} {_version(engine)}"}
        return {
            **meta,
            **self.model_dump(),
            "pyscf_version": pyscf.__version__,
            "units": {"positions": "angstrom", "matrices": "hartree"},
            "ao_order": "pyscf",
            "matrix": "converged Fock matrix",
        }


def labels_recipe(meta: dict | None, basis: str) -> tuple[Recipe, str | None]:
    """The recipe of a data file's labels from its stored ``meta`` (see
    :meth:`Recipe.as_meta`), and a note saying what was assumed when the file records none
    (``None`` when it does).

    Files without a functional: SchNOrb's MD17 files are PBE/def2-SVP labels computed with ORCA
    (the DEQHNet paper, §5); raw QH9 files are QH9's B3LYP/def2-SVP recipe (:class:`Recipe`'s
    defaults).
    """
    meta = dict(meta or {})
    if meta.get("xc"):
        return Recipe.from_meta({"basis": basis, **meta}), None
    if meta.get("source_format") == "schnorb-md17":
        return Recipe(xc="pbe", basis=basis), (
            f"the file records no functional; assumed PBE/{basis}, the recipe of SchNOrb's MD17 "
            "labels (computed with ORCA, whose grids differ from PySCF's)"
        )
    return Recipe(basis=basis), (
        f"the file records no recipe; assumed QH9's: b3lyp5/{basis}, grid level 3"
    )


def override_recipe(recipe: Recipe, items: Sequence[str] = (), **changes) -> Recipe:
    """``recipe`` with changes: ``items`` are ``KEY=VALUE`` (value parsed as YAML, e.g.
    ``xc=pbe``, ``grid_level=4``) or paths of JSON/YAML/TOML files holding such keys; keyword
    ``changes`` that are not None apply last. Errors name the field or the file."""

    values: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key.strip():
            try:
                values[key.strip().replace("-", "_")] = parse_yaml(value, f"--recipe {item!r}")
            except ConfigError as err:
                raise DataError(str(err)) from None
            continue
        path = Path(item)
        if not path.is_file():
            raise DataError(f"--recipe {item!r}: neither KEY=VALUE nor a recipe file")
        try:
            loaded = read_settings(path)
        except ConfigError as err:
            raise DataError(str(err)) from None
        if not isinstance(loaded, dict):
            raise DataError(f"{path}: a recipe file holds a mapping of recipe fields")
        values |= loaded
    values |= {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(values) - set(Recipe.model_fields))
    if unknown:
        raise DataError(
            f"--recipe: unknown field(s) {', '.join(unknown)}; known: "
            f"{', '.join(Recipe.model_fields)}"
        )
    try:
        return Recipe(**(recipe.model_dump() | values))
    except ValidationError as err:
        raise DataError(f"--recipe: {validation_message(err)}") from None


def describe_recipe(recipe: Recipe) -> str:
    """``b3lyp5/def2-svp, grid 3, conv_tol 1e-09, charge 0``."""
    return (
        f"{recipe.xc}/{recipe.basis}, grid {recipe.grid_level}, conv_tol {recipe.conv_tol:g}, "
        f"charge {recipe.charge}"
    )


def _version(package: str) -> str:
    """The installed version of ``package`` (gpu4pyscf's wheels carry the CUDA in the name)."""
    for name in (package, f"{package}-cuda12x", f"{package}-cuda11x", f"{package}-cuda13x"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"
