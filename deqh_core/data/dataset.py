"""The PyG dataset: molecules served with their blocks, masks and overlaps.

Each item is a ``torch_geometric.data.Data`` with

==============  =====================  ==================================================
``z``           [n_atoms]              atomic numbers
``pos``         [n_atoms, 3]           positions, Å, lab frame
``slot_ao``     [n_atoms, A]           block tables (:mod:`deqh_core.ao.blocks`), PySCF order
``slot_sign``   [n_atoms, A]
``n_ao``        [1]                    number of AOs
``pair_index``  [2, n_pairs]           ordered atom pairs of the off-diagonal blocks
``h_diag``      [n_atoms, A, A]        Hamiltonian blocks, model order, Hartree
``h_off``       [n_pairs, A, A]
``s_diag``      [n_atoms, A, A]        overlap blocks (on-site)
``s_off``       [n_pairs, A, A]        overlap blocks (off-site; ``overlap="full"`` only)
``mol_id``      [1]                    id in the source file
==============  =====================  ==================================================

Padding entries are zero; ``slot_ao >= 0`` is the per-atom mask. PyG batching increments
``pair_index`` by the atom count, so batches work out of the box.

Scale: an item is built from its row on every access (reading one row of SQLite, two gathers),
so memory does not grow with the file. Training needs only the on-site overlap blocks, which
depend on the element alone (both AOs sit on one atom): ``overlap="onsite"`` takes them from a
per-element table computed once, so no overlap integral is evaluated per molecule;
``overlap="full"`` (evaluation, orbital energies) computes the whole S with PySCF unless the
file stores it. Built items can be kept in memory up to a byte budget (``cache_mb``).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from deqh_core.ao.basis import AOLayout, mole, symbol
from deqh_core.ao.blocks import block_data, split
from deqh_core.ao.orbitals import SingularOverlapError, check_overlap
from deqh_core.data.domain import dataset_identity
from deqh_core.data.md17 import open_source
from deqh_core.data.store import MoleculeRecord
from deqh_core.util.errors import DataError

BUNDLED = Path(__file__).parent / "bundled" / "water_ethanol.db"
"""The small default dataset shipped in the package (see docs/data.md for how it was made)."""


@cache
def onsite_overlap_blocks(layout: AOLayout) -> torch.Tensor:
    """``[max Z + 1, A, A]`` float64: every element's on-site overlap block in model order
    (zero rows for elements outside the layout), from PySCF's ``int1e_ovlp`` of the lone atom.

    The on-site block of S couples two AOs of one atom, so it is the same in every molecule.
    """
    table = torch.zeros(max(layout.elements) + 1, layout.width, layout.width, dtype=torch.float64)
    for z in layout.elements:
        atom = block_data(layout, torch.tensor([z]))
        s = mole([z], np.zeros((1, 3)), layout.basis).intor("int1e_ovlp")
        table[z] = split(torch.as_tensor(s).reshape(-1), atom)[0][0]
    return table


SYMMETRY_TOLERANCE = 1e-8
"""Largest ``|M - M.T|`` accepted in a label, relative to the matrix's scale ``max(1, max|M|)``
(Hartree for H). Labels of an SCF code are symmetric to rounding (1e-15 relative); the bundled
data and QH9 are exactly symmetric."""


def asymmetry(matrix: np.ndarray) -> tuple[float, str | None]:
    """``(max |M - M.T|, problem)``: ``problem`` says where the largest asymmetry is when it
    exceeds :data:`SYMMETRY_TOLERANCE` (relative), else None."""
    m = np.asarray(matrix)
    diff = np.abs(m - m.T)
    worst = float(diff.max()) if diff.size else 0.0
    tol = SYMMETRY_TOLERANCE * max(1.0, float(np.abs(m).max()) if m.size else 1.0)
    if worst <= tol:
        return worst, None
    i, j = np.unravel_index(int(diff.argmax()), diff.shape)
    return worst, (
        f"not symmetric: M[{i},{j}] = {m[i, j]:.10g} but M[{j},{i}] = {m[j, i]:.10g} "
        f"(|difference| {worst:.3g} > tolerance {tol:.1g})"
    )


def molecule_data(
    record: MoleculeRecord,
    layout: AOLayout,
    dtype: torch.dtype = torch.float64,
    where: str = "",
    overlap: Literal["full", "onsite"] = "full",
) -> Data:
    """Build the PyG item of one molecule; checks the label against the layout.

    ``overlap="onsite"`` gives ``s_diag`` only, from :func:`onsite_overlap_blocks` (exactly the
    diagonal blocks of the full S); ``"full"`` gives ``s_diag`` and ``s_off`` of the whole S.
    """
    z = torch.as_tensor(record.atomic_numbers, dtype=torch.long)
    name = f"{where}molecule id {record.id}"
    try:
        data = block_data(
            layout,
            z,
            pos=torch.as_tensor(record.positions, dtype=dtype),
            z=z,
            mol_id=torch.tensor([record.id]),
        )
    except Exception as err:
        raise DataError(f"{name}: {err}") from None
    n_ao = int(data.n_ao)
    s = None
    if overlap == "full":
        s = record.overlap
        if s is None:
            s = mole(record.atomic_numbers, record.positions, layout.basis).intor("int1e_ovlp")
    for what, matrix in (("Hamiltonian", record.hamiltonian), ("overlap", s)):
        if matrix is None and what == "overlap":
            continue
        if matrix is None:
            raise DataError(f"{name}: no {what}")
        if matrix.shape != (n_ao, n_ao):
            raise DataError(
                f"{name}: {what} is {matrix.shape[0]}x{matrix.shape[1]} but the molecule has "
                f"{n_ao} AOs in {layout.basis}; is the dataset's basis right?"
            )
        if not np.isfinite(matrix).all():
            raise DataError(f"{name}: {what} contains NaN or inf")
        problem = asymmetry(matrix)[1]
        if problem:
            raise DataError(f"{name}: {what} label is {problem}")
    h = torch.as_tensor(record.hamiltonian, dtype=dtype).reshape(-1)
    data.h_diag, data.h_off = split(h, data)
    if s is None:
        data.s_diag = onsite_overlap_blocks(layout)[z].to(dtype)
    else:
        data.s_diag, data.s_off = split(torch.as_tensor(s, dtype=dtype).reshape(-1), data)
    return data


def structure_item(
    atomic_numbers: np.ndarray,
    positions: np.ndarray,
    layout: AOLayout,
    dtype: torch.dtype = torch.float64,
) -> Data:
    """The PyG item of an unlabelled molecule: the fields of :func:`molecule_data` without
    ``h_diag``/``h_off``; ``S`` from PySCF in ``layout.basis`` (positions ``[n_atoms, 3]`` in
    Å).

    Raises:
        SingularOverlapError: ``S`` is (nearly) singular, e.g. atoms on top of each other; the
            message names the closest pair of atoms.
    """
    z = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
    pos = np.asarray(positions, dtype=np.float64)
    overlap = mole(z.tolist(), pos, layout.basis).intor("int1e_ovlp")
    try:
        check_overlap(overlap)
    except SingularOverlapError as err:
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.diag(np.full(len(pos), np.inf))
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        zi, zj = symbol(int(z[i])), symbol(int(z[j]))
        raise SingularOverlapError(
            f"{err}; atoms {i} ({zi}) and {j} ({zj}) are {d[i, j]:.3f} Å apart"
        ) from None
    data = block_data(layout, z, z=z, pos=torch.as_tensor(pos, dtype=dtype))
    data.s_diag, data.s_off = split(torch.as_tensor(overlap, dtype=dtype).reshape(-1), data)
    return data


def _nbytes(data: Data) -> int:
    return sum(v.numel() * v.element_size() for v in data.values() if isinstance(v, torch.Tensor))


class HamiltonianDataset(Dataset):
    """Molecules of a QH9-schema SQLite file or a SchNOrb MD17 ASE database.

    Args:
        path: the data file (default: the bundled water/ethanol set).
        basis: basis set of the labels; taken from the file's recipe when it has one (a
            mismatch is an error), required otherwise (raw QH9 files are def2-SVP).
        layout: AO layout to use, e.g. a model's; default: the basis over the file's elements.
        ids: restrict to these molecule ids (a split), in this order.
        dtype: floating-point type of positions and matrices.
        overlap: ``"full"`` (``s_diag`` and ``s_off``: orbital energies need the whole S) or
            ``"onsite"`` (``s_diag`` only: all a model reads; no integrals per molecule).
        cache: keep built items in memory, as long as they fit ``cache_mb``.
        cache_mb: memory budget of the cache in MiB; once full, later items are rebuilt on
            every access. Each DataLoader worker process holds its own cache.
        transform: applied to every built item (before caching), e.g.
            :class:`deqh_core.solvers.prior.InitialGuess`.
    """

    def __init__(
        self,
        path: str | Path = BUNDLED,
        basis: str | None = None,
        layout: AOLayout | None = None,
        ids: list[int] | None = None,
        dtype: torch.dtype = torch.float64,
        overlap: Literal["full", "onsite"] = "full",
        cache: bool = False,
        cache_mb: float = 2048,
        transform=None,
    ):

        self.path = Path(path)
        reader = open_source(self.path, basis=basis)
        recipe = reader.recipe or {}
        if basis is None:
            basis = layout.basis if layout is not None else recipe.get("basis")
            if basis is None:
                raise DataError(f"{self.path}: the file records no basis; pass basis=...")
        if recipe.get("basis") and recipe["basis"].lower() != basis.lower():
            raise DataError(f"{self.path}: labels are in basis {recipe['basis']!r}, not {basis!r}")
        self.recipe = recipe
        self.ids = list(reader.ids()) if ids is None else [int(i) for i in ids]
        if not self.ids and ids is None:
            failed = getattr(reader, "failures", dict)()
            why = f"; all {len(failed)} of its tasks failed (deqh data check)" if failed else ""
            raise DataError(f"{self.path}: holds no molecules (its data table is empty{why})")
        if layout is None:
            layout = AOLayout(basis, _elements(reader))
        elif layout.basis.lower() != basis.lower():
            raise DataError(f"{self.path}: layout is for {layout.basis!r}, data for {basis!r}")
        self.layout = layout
        if overlap not in ("full", "onsite"):
            raise ValueError(f"overlap must be 'full' or 'onsite', not {overlap!r}")
        self.dtype = dtype
        self.overlap = overlap
        self.transform = transform
        self._basis = basis
        self._cache: dict[int, Data] | None = {} if cache and cache_mb > 0 else None
        self._cache_room = int(cache_mb * 2**20)
        self._reader, self._pid = reader, os.getpid()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def reader(self):
        # SQLite connections must not cross a fork (DataLoader workers): reopen per process.
        if self._pid != os.getpid():
            self._reader, self._pid = open_source(self.path, basis=self._basis), os.getpid()
        return self._reader

    def __getitem__(self, index: int) -> Data:
        mol_id = self.ids[index]
        if self._cache is not None and mol_id in self._cache:
            return self._cache[mol_id]
        record = self.reader.get(mol_id)
        data = molecule_data(record, self.layout, self.dtype, f"{self.path}: ", self.overlap)
        if self.transform is not None:
            data = self.transform(data)
        # the item's own gather tables (cached on it while its blocks were split) are larger
        # than its blocks and a batch makes its own: do not keep or ship them
        data.__dict__.pop("_block_gather", None)
        if self._cache is not None and (size := _nbytes(data)) <= self._cache_room:
            self._cache[mol_id] = data
            self._cache_room -= size
        return data

    def check_sizes(self, ids=None) -> None:
        """Check, before a run reads them, that the records of ``ids`` (default: all) fit the AO
        layout: as many coordinates as atoms, known elements, ``Ham`` (and a stored overlap)
        ``n_ao x n_ao``. Byte counts only (SQLite's ``length()``), so a truncated or misfit
        record stops a run at step 0, not mid-run; files without sizes (ASE) are skipped.

        Raises:
            DataError: naming the file, the molecule id and what does not fit.
        """
        sizes = getattr(self.reader, "blob_sizes", None)
        if sizes is None:
            return
        wanted = set(self.ids if ids is None else ids)
        known = set(self.layout.elements)
        for mol_id, z, n_pos, n_ham, n_overlap in sizes():
            if mol_id not in wanted:
                continue
            where = f"{self.path}: molecule id {mol_id}"
            if n_pos != 24 * len(z):
                raise DataError(f"{where}: {len(z)} atomic numbers but {n_pos / 8:g} coordinates")
            if not set(z.tolist()) <= known:
                raise DataError(
                    f"{where}: elements {sorted(set(z.tolist()) - known)} not in the layout"
                )
            n_ao = int(self.layout.n_ao_table[z].sum())
            for what, n_bytes in (("Ham", n_ham), ("overlap", n_overlap)):
                if n_bytes is not None and n_bytes != 8 * n_ao * n_ao:
                    raise DataError(
                        f"{where}: {what} holds {n_bytes} bytes, not the {n_ao}x{n_ao} float64 "
                        f"numbers ({8 * n_ao * n_ao} bytes) of its {n_ao} AOs in "
                        f"{self.layout.basis} (truncated or another basis?)"
                    )

    def records(self, ids=None):
        """The raw records (full matrices, PySCF order) of ``ids`` (default: this dataset's),
        in order, read one at a time."""
        return (self.reader.get(i) for i in (self.ids if ids is None else ids))

    def structures(self, ids=None):
        """``(id, atomic_numbers [n], positions [n, 3] Å)`` of ``ids`` (default: this
        dataset's) in file order, without reading their matrices."""
        wanted = set(self.ids if ids is None else ids)
        for mol_id, z, pos in self.reader.structures():
            if mol_id in wanted:
                yield mol_id, z, pos

    def identity(self) -> dict:
        """The file's identity and its labels' recipe
        (:func:`deqh_core.data.domain.dataset_identity`)."""

        reader = self.reader
        return dataset_identity(
            self.path, reader.ids(), self.recipe, self._basis, reader.structures()
        )


def _elements(reader) -> list[int]:
    elements = getattr(reader, "elements", None)
    if callable(elements):
        return list(elements())
    return sorted({int(z) for r in reader for z in r.atomic_numbers})
