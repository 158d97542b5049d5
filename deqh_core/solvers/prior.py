"""The prior Hamiltonian ``H0``: PySCF's starting point, computed once per molecule, cached.

A model with a prior learns the correction to a cheap physical Hamiltonian instead of H from
nothing: a predictor outputs ``H = H0 + f(Z, R, S)``, a DEQ solver iterates
``H_{k+1} = H0 + g(H_k, Z, R, S)`` from ``H_0 = H0``, as an SCF starts from its guess
(:class:`PriorResidual`; any backbone, chosen with ``model.prior``). Two priors, both built with
the *labels'* recipe (basis, functional, grid, charge):

* ``"1e"``: the core Hamiltonian ``T + V_nuc (+ ECP)``, one-electron integrals only
  (milliseconds);
* ``"minao"``: the Fock matrix of PySCF's minao guess density, ``F[D_minao]`` (Coulomb,
  exchange and XC on the recipe's grid: one Fock build, about one SCF cycle).

:class:`PriorCache` serves every molecule's ``H0``: from the dataset file itself when its
labelling stored it (``deqh data generate`` / ``qh9`` keep the minao ``H0``, their SCF's first
Fock matrix, in the file's ``prior`` table), else from an SQLite cache per dataset, recipe and
prior (each row checks the geometry it was computed for) filled in parallel before training,
so no epoch recomputes it; :class:`InitialGuess` puts ``H0`` on a dataset item in block
form (``h0_diag``, ``h0_off``), from the cache when it has the molecule. A DEQ started from a
PySCF guess without a prior (``deq.init``) uses the same items.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from deqh_core.ao.blocks import assemble, from_square, split, to_square
from deqh_core.data.domain import geometry_checksum
from deqh_core.data.md17 import open_source
from deqh_core.data.recipe import Recipe, check_engine, minao_density, to_host
from deqh_core.data.store import HamiltonianDB
from deqh_core.solvers.deq import DEQSetupError
from deqh_core.solvers.protocol import Blocks
from deqh_core.util.cache import cache_dir
from deqh_core.util.cluster import Lost
from deqh_core.util.errors import DataError, DeqhError
from deqh_core.util.parallel import map_unordered
from deqh_core.util.progress import tracked

PRIORS = ("none", "1e", "minao")
# what H0 depends on: a model with a prior learned corrections to H0 built with these
H0_FIELDS = ("xc", "basis", "grid_level")
Kind = Literal["1e", "minao"]
_FORMAT = 2  # bump when what a cache row holds or its key means changes


def prior_matrix(
    recipe: Recipe, kind: Kind, atomic_numbers, positions, engine: str = "pyscf"
) -> np.ndarray:
    """``H0 [n_ao, n_ao]`` in PySCF AO order (Hartree) for positions in Å, exactly symmetric;
    on a GPU with ``engine="gpu4pyscf"``."""
    if kind not in ("1e", "minao"):
        raise DeqhError(f"prior must be '1e' or 'minao', not {kind!r}")
    return prior_with(recipe.rks(recipe.mole(atomic_numbers, positions), engine), kind)


def prior_with(mf, kind: Kind) -> np.ndarray:
    """The prior ``H0`` (``[n_ao, n_ao]``, PySCF order, Hartree, exactly symmetric) of
    ``mf.mol`` built with the mean-field object ``mf`` (its grid and integrals, which it keeps
    for an SCF that follows; PySCF's or gpu4pyscf's): ``"minao"``: ``F[D_minao]`` of PySCF's
    minao density; ``"1e"``: the core Hamiltonian."""
    # PySCF's minao density, not mf.get_init_guess: gpu4pyscf's differs, and an instance
    # whose get_init_guess was replaced (deqh_core.pyscf.accelerate) must not call itself
    h = to_host(mf.get_hcore() if kind == "1e" else mf.get_fock(dm=minao_density(mf.mol)))
    return (h + h.T) / 2


def _timed(
    recipe: Recipe, kind: Kind, mol_id: int, z, pos, engine: str = "pyscf"
) -> tuple[int, np.ndarray, float]:
    start = time.perf_counter()
    h = prior_matrix(recipe, kind, z, pos, engine)
    return mol_id, h, time.perf_counter() - start


class PriorCache:
    """On-disk ``H0`` of a dataset's molecules for one recipe and prior kind.

    The cache file is keyed by content, not by where the dataset lies: its name holds the prior
    and a hash of the recipe and of the dataset's molecules (ids, atomic numbers, positions:
    :func:`deqh_core.data.domain.geometry_checksum`), so another recipe or other molecules never
    read it, while the same molecules opened by another path (a moved or renamed folder, a copy,
    a container mount) are served. It is looked for next to the dataset, then in
    :func:`deqh_core.util.cache.cache_dir`; a new one goes next to the dataset when that folder is
    writable (and is not inside an installed package; a shared folder serves every machine and
    rank), else into the cache folder. Each row also keeps the atomic numbers and positions it
    was computed for, and a lookup with another geometry is a miss. Writes are one transaction
    per molecule (a killed fill keeps what it did); reading works from any number of processes
    (DataLoader workers).
    """

    def __init__(
        self, dataset: str | Path, recipe: Recipe, kind: Kind, geometry: str | None = None
    ):
        """``geometry``: the dataset's geometry checksum when the caller has it (a checkpoint's
        ``identity``), else read from the file."""
        if kind not in ("1e", "minao"):
            raise DeqhError(f"prior must be '1e' or 'minao', not {kind!r}")
        self.dataset, self.recipe, self.kind = Path(dataset).resolve(), recipe, kind
        geometry = geometry or _geometry(self.dataset)
        key = json.dumps([_FORMAT, kind, recipe.model_dump(), geometry], sort_keys=True)
        name = f"deqh-h0-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.db"
        beside, central = self.dataset.parent / name, cache_dir() / "priors" / name
        writable = _writable(self.dataset.parent) and not _inside_package(self.dataset.parent)
        self.path = next(
            (path for path in (beside, central) if path.is_file()),
            beside if writable else central,
        )
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        self.stored = _stored_ids(self.dataset, recipe, kind)
        self._source: HamiltonianDB | None = None
        self._source_pid = -1

    def __repr__(self) -> str:
        return f"PriorCache({self.kind!r}, {self.path})"

    @property
    def db(self) -> sqlite3.Connection:
        # one connection per process: SQLite connections must not cross a fork
        if self._db is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS h0 (id INTEGER PRIMARY KEY, z BLOB NOT NULL, "
                "pos BLOB NOT NULL, h0 BLOB NOT NULL, seconds REAL)"
            )
            self._db.commit()
            self._pid = os.getpid()
        return self._db

    def __getstate__(self) -> dict:  # picklable into DataLoader workers, without connection
        return {**self.__dict__, "_db": None, "_pid": -1, "_source": None, "_source_pid": -1}

    def get(self, mol_id: int, atomic_numbers, positions) -> np.ndarray | None:
        """The stored ``H0`` of this molecule, or None if absent or computed for another
        geometry (positions compared to 1e-4 Å, float32 items included). ``H0`` stored in the
        dataset file itself (its ``prior`` table, written while labelling) comes first."""
        if int(mol_id) in self.stored:
            if self._source is None or self._source_pid != os.getpid():
                self._source, self._source_pid = HamiltonianDB(self.dataset), os.getpid()
            return self._source.prior(int(mol_id), self.kind)
        row = self.db.execute("SELECT z, pos, h0 FROM h0 WHERE id = ?", (int(mol_id),)).fetchone()
        if row is None or not _same_geometry(row[0], row[1], atomic_numbers, positions):
            return None
        n = round((len(row[2]) // 8) ** 0.5)
        return np.frombuffer(row[2], dtype="<f8").reshape(n, n).copy()  # writable

    def missing(self, structures: Iterable) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``{id: (atomic_numbers, positions)}`` of the molecules ``(id, Z, positions)`` whose
        ``H0`` is not stored for that geometry (reads the stored geometries, not the H0)."""
        stored = {i: (z, pos) for i, z, pos in self.db.execute("SELECT id, z, pos FROM h0")}
        return {
            i: (z, pos)
            for i, z, pos in structures
            if i not in self.stored and (i not in stored or not _same_geometry(*stored[i], z, pos))
        }

    def put(self, mol_id: int, atomic_numbers, positions, h0: np.ndarray, seconds: float) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO h0 VALUES (?, ?, ?, ?, ?)",
                (
                    int(mol_id),
                    np.ascontiguousarray(atomic_numbers, dtype="<i4").tobytes(),
                    np.ascontiguousarray(positions, dtype="<f8").tobytes(),
                    np.ascontiguousarray(h0, dtype="<f8").tobytes(),
                    float(seconds),
                ),
            )

    def seconds(self) -> dict[int, float]:
        """Wall time each stored ``H0`` took to compute, by molecule id."""
        return dict(self.db.execute("SELECT id, seconds FROM h0").fetchall())

    def fill(
        self,
        structures: Iterable,
        workers: int = 1,
        progress: bool = True,
        shard=(0, 1),
        into_dataset: bool = False,
        scheduler: str | None = None,
        engine: str = "pyscf",
    ) -> int:
        """Compute and store ``H0`` of every molecule ``(id, atomic_numbers [n], positions
        [n, 3] Å)`` of ``structures`` not yet here (those with ``id % N == i`` for ``shard=(i,
        N)``), in ``workers`` processes or on the Dask cluster ``scheduler``
        (:func:`deqh_core.util.cluster.connect`); returns how many were computed (a molecule
        Dask gave up on is left for the next fill). ``into_dataset``: into the dataset file's
        own ``prior`` table (a QH9-schema file labelled with this recipe; ``deqh data
        prior``), each molecule committed on its own, so a killed fill resumes where it
        stopped. ``engine="gpu4pyscf"``: on GPUs."""

        i, n = shard
        structures = list(structures)
        if into_dataset:  # what the file lacks; what the cache already has is copied over
            known = {k: (z, p) for k, z, p in structures if k not in self.stored}
            missing = self.missing(structures)
            with HamiltonianDB(self.dataset, "a") as target:
                for k in set(known) - set(missing):
                    target.write_prior(k, self.kind, self.get(k, *known[k]))
                    self.stored.add(k)
        todo = {k: v for k, v in self.missing(structures).items() if k % n == i}
        if not todo:
            return 0
        target = HamiltonianDB(self.dataset, "a") if into_dataset else None
        check_engine(engine)
        jobs = ((self.recipe, self.kind, k, z, pos, engine) for k, (z, pos) in todo.items())
        computed = 0
        try:
            with tracked(f"prior {self.kind} H0", len(todo), progress) as advance:
                for result in map_unordered(_timed, jobs, workers, scheduler):
                    if isinstance(result, Lost):
                        continue
                    mol_id, h0, seconds = result
                    computed += 1
                    if target is None:
                        self.put(mol_id, *todo[mol_id], h0, seconds)
                    else:
                        target.write_prior(mol_id, self.kind, h0)
                        self.stored.add(mol_id)
                    advance()
        finally:
            if target is not None:
                target.close()
        return computed

    def wait(self, structures: list, poll_s: float = 10.0) -> None:
        """Return once every molecule of ``structures`` has its ``H0`` here (other processes,
        e.g. the other ranks of a distributed run, fill their shares meanwhile)."""
        while self.missing(structures):
            time.sleep(poll_s)


def _geometry(dataset: Path) -> str:
    """:func:`geometry_checksum` of every molecule of a dataset file (none if unreadable)."""
    try:
        reader = open_source(dataset)
    except DataError:  # not a dataset (yet): nothing it could serve
        return geometry_checksum(())
    try:
        return geometry_checksum(reader.structures())
    finally:
        reader.close()


def _stored_ids(dataset: Path, recipe: Recipe, kind: str) -> set[int]:
    """Ids whose ``H0`` of ``kind`` the dataset file stores (its ``prior`` table), when the
    file is deqh's SQLite schema and its recipe builds the same ``H0`` as ``recipe``."""
    try:
        with HamiltonianDB(dataset) as db:
            # a file without a recipe holds QH9's labels (deqh_core.data.recipe.labels_recipe)
            made = Recipe.from_meta({"basis": recipe.basis, **(db.recipe or {})})
            if any(getattr(made, f) != getattr(recipe, f) for f in (*H0_FIELDS, "charge", "spin")):
                return set()
            return db.prior_ids(kind)
    except DataError:  # not a QH9-schema SQLite file (e.g. an ASE database): nothing stored
        return set()


def _same_geometry(z_blob: bytes, pos_blob: bytes, atomic_numbers, positions) -> bool:
    z = np.frombuffer(z_blob, dtype="<i4")
    pos = np.frombuffer(pos_blob, dtype="<f8").reshape(-1, 3)
    given_z = np.asarray(atomic_numbers).reshape(-1)
    given_pos = np.asarray(positions, dtype=np.float64)
    if z.shape != given_z.shape or (z != given_z).any() or pos.shape != given_pos.shape:
        return False
    return bool(np.abs(pos - given_pos).max(initial=0.0) <= 1e-4)


def _writable(folder: Path) -> bool:
    """Whether we may write in ``folder``: its permissions say so. (``os.access`` alone is
    true for root even in a folder marked read-only, such as a shared data folder.)"""
    if not os.access(folder, os.W_OK):
        return False
    return os.geteuid() != 0 or bool(folder.stat().st_mode & 0o222)


def _inside_package(folder: Path) -> bool:
    """Whether ``folder`` lies inside deqh's own installed package (the bundled data)."""
    package = Path(__file__).resolve().parents[1]  # deqh_core/ (this file: deqh_core/solvers/)
    return folder == package or package in folder.resolve().parents


class InitialGuess:
    """Dataset transform: put a PySCF starting Hamiltonian ``H0`` on a molecule's PyG item.

    ``kind="1e"``: the core Hamiltonian ``mf.get_hcore()`` (kinetic + nuclear attraction + ECP).
    ``kind="minao"``: the recipe's Fock matrix of PySCF's minao guess density,
    ``mf.get_fock(dm=mf.get_init_guess(key="minao"))`` (Coulomb, exchange and XC on the DFT grid).
    Both are stored in block form as ``h0_diag [n_atoms, A, A]`` and ``h0_off [n_pairs, A, A]``
    (model order, Hartree, split with the item's own tables) plus ``h0_kind``; the item is
    shallow-copied, not modified.

    Cost: ``"1e"`` is one-electron integrals only (milliseconds). ``"minao"`` is one Fock build:
    the recipe's DFT grid, J/K and XC on it, about one SCF cycle plus grid setup (~0.2 s for
    water, ~0.5 s for methanol with B3LYP/def2-SVP/grid 3 on one core; seconds for QH9-sized
    molecules): give a :class:`PriorCache` filled beforehand, and the transform reads ``H0``
    from it (computing only what it lacks).

    Args:
        recipe: the DFT recipe of the labels (basis, functional, grid, charge, spin).
        kind: ``"minao"`` or ``"1e"``.
        dtype: dtype of the stored blocks (default: the item's ``pos`` dtype).
        cache: where precomputed ``H0`` are read, by the item's ``mol_id``.
        sqrt_overlap: also put ``s_half``, the flat ``S^(1/2)`` of the molecule (``[n_ao**2]``,
            the data's AO order), on the item: a ``lowdin`` correction needs it (one overlap
            integral and one eigendecomposition per item, milliseconds).
    """

    def __init__(
        self,
        recipe: Recipe,
        kind: Kind,
        dtype: torch.dtype | None = None,
        cache: PriorCache | None = None,
        sqrt_overlap: bool = False,
    ):
        if kind not in ("minao", "1e"):
            raise DEQSetupError(f"initial guess kind must be 'minao' or '1e', not {kind!r}")
        self.recipe, self.kind, self.dtype, self.cache = recipe, kind, dtype, cache
        self.sqrt_overlap = sqrt_overlap

    @classmethod
    def for_run(cls, config, basis: str, recipe: dict | None) -> InitialGuess | None:
        """The transform a run needs (``config``: a ``TrainConfig``): its prior's, or its DEQ
        start's when that is a PySCF guess; None if it needs none.

        ``recipe`` is the dataset's recipe; missing fields default to QH9's.
        """
        kind = start_kind(config.model, config.deq)
        if kind is None:
            return None
        recipe = Recipe.from_meta({"basis": basis, **(recipe or {})})
        return cls(recipe, kind, sqrt_overlap=config.model.prior_basis == "lowdin")

    def __repr__(self) -> str:
        return f"InitialGuess({self.kind!r}, xc={self.recipe.xc!r}, basis={self.recipe.basis!r})"

    def matrix(self, atomic_numbers, positions) -> np.ndarray:
        """The guess ``[n_ao, n_ao]`` in PySCF AO order (Hartree) for positions in Å."""
        return prior_matrix(self.recipe, self.kind, atomic_numbers, positions)

    def __call__(self, data):
        z = data.z.detach().cpu().numpy()
        pos = data.pos.detach().cpu().double().numpy()
        h = None
        if self.cache is not None:
            h = self.cache.get(int(data.mol_id.reshape(-1)[0]), z, pos)
        if h is None:
            h = self.matrix(z, pos)
        return self.attach(data, h)

    def attach(self, data, h: np.ndarray):
        """A shallow copy of the item ``data`` with ``h`` (``[n_ao, n_ao]``, PySCF order,
        Hartree: this transform's guess for the molecule, computed elsewhere) as its ``H0``."""
        n_ao = int(data.n_ao.reshape(-1)[0])
        if h.shape != (n_ao, n_ao):
            raise DataError(
                f"{self.kind} guess is {h.shape[0]}x{h.shape[1]} in {self.recipe.basis} but the "
                f"item has {n_ao} AOs; does the recipe's basis match the dataset's?"
            )
        dtype = self.dtype or data.pos.dtype
        flat = torch.as_tensor(h, dtype=dtype, device=data.slot_ao.device).reshape(-1)
        out = copy.copy(data)
        out.h0_diag, out.h0_off = split(flat, out)
        out.h0_kind = self.kind
        if self.sqrt_overlap:
            z = data.z.detach().cpu().numpy()
            pos = data.pos.detach().cpu().double().numpy()
            s = self.recipe.mole(z, pos).intor("int1e_ovlp")
            out.s_half = torch.as_tensor(sqrt_overlap(s), dtype=dtype).reshape(-1)
        return out


def sqrt_overlap(s: np.ndarray) -> np.ndarray:
    """``S^(1/2)`` of a symmetric positive definite overlap matrix (eigendecomposition)."""
    w, v = np.linalg.eigh(s)
    if w[0] <= 0:
        raise DataError(
            f"the overlap matrix is not positive definite (lowest eigenvalue {w[0]:.2e})"
        )
    return (v * np.sqrt(w)) @ v.T


def check_prior_recipe(kind: str, trained: Recipe, given: Recipe, what: str) -> None:
    """Refuse to build a prior model's ``H0`` with another recipe than the one it was trained
    on (a ``DataError`` naming ``what`` and the fields that differ); no-op without a prior."""
    if kind in (None, "none"):
        return
    differ = [f for f in H0_FIELDS if getattr(trained, f) != getattr(given, f)]
    if differ:
        changes = ", ".join(f"{f} {getattr(trained, f)!r} -> {getattr(given, f)!r}" for f in differ)
        raise DataError(
            f"{what}: this model learned the correction to the {kind!r} prior H0 of its labels' "
            f"recipe, which would change ({changes}); use data labelled with the model's recipe"
        )


def start_kind(model, deq) -> Kind | None:
    """Which ``H0`` a model (``ModelConfig``) with DEQ settings (``DEQConfig``) needs on its
    items: its prior, else its DEQ's PySCF start, else None."""
    if model.prior != "none":
        return model.prior
    if model.deq and deq.init != "identity":
        return deq.init
    return None


class PriorResidual(torch.nn.Module):
    """A Hamiltonian solver that outputs ``H0 + f(...)``: the wrapped solver learns the
    correction to the batch's prior ``H0`` (``h0_diag``, ``h0_off``: :class:`InitialGuess`).

    ``basis="lowdin"`` outputs ``H0 + S^(1/2) f S^(1/2)`` instead (``s_half`` on the batch):
    ``f`` is then the correction of the Löwdin-orthogonalised Hamiltonian ``S^(-1/2) H
    S^(-1/2)``, whose eigenvalues are the orbital energies. An AO-basis correction is divided
    by the overlap's small eigenvalues on its way to the orbital energies: where the AO basis is
    nearly linearly dependent (QM9 molecules in def2-SVP reach ``min eig S ~ 1e-4``), an error
    of 1e-3 Hartree in ``f`` can put a spurious orbital Hartrees deep among the occupied ones;
    in the Löwdin basis an error of ``|f|`` moves every orbital energy by at most ``|f|``.

    Symmetric and equivariant whenever ``f`` is: ``H0`` and ``S^(1/2)`` are exactly symmetric
    PySCF matrices that rotate with the molecule. Capabilities and layout are the wrapped
    solver's.
    """

    def __init__(self, solver, kind: Kind, basis: Literal["ao", "lowdin"] = "ao"):
        super().__init__()
        if basis not in ("ao", "lowdin"):
            raise DeqhError(f"prior basis must be 'ao' or 'lowdin', not {basis!r}")
        self.solver, self.kind, self.basis = solver, kind, basis
        self.capabilities = solver.capabilities
        self.layout = solver.layout

    def inject(self, batch):
        kinds = getattr(batch, "h0_kind", None)  # a str on an item, a list on a PyG batch
        kinds = {kinds} if isinstance(kinds, str) else set(kinds or ())
        if getattr(batch, "h0_diag", None) is None or kinds != {self.kind}:
            raise DeqhError(
                f"this model adds the {self.kind!r} prior H0, but the batch holds "
                f"{sorted(kinds) or 'none'}: put it on the items with "
                f"deqh_core.solvers.prior.InitialGuess(recipe, {self.kind!r})"
            )
        injection = self.solver.inject(batch)
        if self.basis == "ao":
            return injection
        half = getattr(batch, "s_half", None)
        if half is None:
            raise DeqhError(
                "a lowdin-basis correction needs s_half on the batch: "
                "deqh_core.solvers.prior.InitialGuess(recipe, kind, sqrt_overlap=True)"
            )
        # S^(1/2) as padded squares [n_molecules, N, N]: H-independent, so once per batch
        return injection, to_square(half, batch)

    def forward(self, batch, h: Blocks | None, injection) -> Blocks:
        if self.basis == "lowdin":
            injection, half = injection
        out = self.solver(batch, h, injection)
        if self.basis == "lowdin":
            out = self._from_lowdin(out, half, batch)
        return Blocks(batch.h0_diag + out.diag, batch.h0_off + out.off)

    @staticmethod
    def _from_lowdin(f: Blocks, half: torch.Tensor, batch) -> Blocks:
        """``S^(1/2) f S^(1/2)`` per molecule (``half``: ``S^(1/2)`` as padded squares): dense
        and batched, because ``S^(1/2)`` couples every pair of atoms; exactly symmetric."""
        half = half.to(f.diag.dtype)
        x = half @ to_square(assemble(f.diag, f.off, batch), batch) @ half
        x = (x + x.transpose(1, 2)) / 2
        return Blocks(*split(from_square(x, batch), batch))
