"""The PyG dataset: molecules served with their blocks, masks and overlaps.

Each item is a ``torch_geometric.data.Data`` with

==============  =====================  ==================================================
``z``           [n_atoms]              atomic numbers
``pos``         [n_atoms, 3]           positions, Å, lab frame
``slot_ao``     [n_atoms, A]           block tables (:mod:`deqh_core.blocks`), PySCF order
``slot_sign``   [n_atoms, A]
``n_ao``        [1]                    number of AOs
``pair_index``  [2, n_pairs]           ordered atom pairs of the off-diagonal blocks
``h_diag``      [n_atoms, A, A]        Hamiltonian blocks, model order, Hartree
``h_off``       [n_pairs, A, A]
``s_diag``      [n_atoms, A, A]        overlap blocks
``s_off``       [n_pairs, A, A]
``mol_id``      [1]                    id in the source file
==============  =====================  ==================================================

Padding entries are zero; ``slot_ao >= 0`` is the per-atom mask. PyG batching increments
``pair_index`` by the atom count, so batches work out of the box.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from deqh_core.basis import AOLayout, mole
from deqh_core.blocks import block_data, split
from deqh_core.data.store import MoleculeRecord
from deqh_core.errors import DataError

BUNDLED = Path(__file__).parent / "bundled" / "water_ethanol.db"
"""The small default dataset shipped in the package (see docs/data.md for how it was made)."""


def molecule_data(
    record: MoleculeRecord,
    layout: AOLayout,
    dtype: torch.dtype = torch.float64,
    where: str = "",
) -> Data:
    """Build the PyG item of one molecule; checks the label against the layout."""
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
    overlap = record.overlap
    if overlap is None:
        overlap = mole(record.atomic_numbers, record.positions, layout.basis).intor("int1e_ovlp")
    for what, matrix in (("Hamiltonian", record.hamiltonian), ("overlap", overlap)):
        if matrix is None:
            raise DataError(f"{name}: no {what}")
        if matrix.shape != (n_ao, n_ao):
            raise DataError(
                f"{name}: {what} is {matrix.shape[0]}x{matrix.shape[1]} but the molecule has "
                f"{n_ao} AOs in {layout.basis}; is the dataset's basis right?"
            )
        if not np.isfinite(matrix).all():
            raise DataError(f"{name}: {what} contains NaN or inf")
    h = torch.as_tensor(record.hamiltonian, dtype=dtype).reshape(-1)
    data.h_diag, data.h_off = split(h, data)
    data.s_diag, data.s_off = split(torch.as_tensor(overlap, dtype=dtype).reshape(-1), data)
    return data


class HamiltonianDataset(Dataset):
    """Molecules of a QH9-schema SQLite file or a SchNOrb MD17 ASE database.

    Args:
        path: the data file (default: the bundled water/ethanol set).
        basis: basis set of the labels; taken from the file's recipe when it has one (a
            mismatch is an error), required otherwise (raw QH9 files are def2-SVP).
        layout: AO layout to use, e.g. a model's; default: the basis over the file's elements.
        ids: restrict to these molecule ids (a split), in this order.
        cache: keep built items in memory (for small datasets).
        transform: applied to every built item (before caching), e.g.
            :class:`deqh_core.deq.InitialGuess`.
    """

    def __init__(
        self,
        path: str | Path = BUNDLED,
        basis: str | None = None,
        layout: AOLayout | None = None,
        ids: list[int] | None = None,
        dtype: torch.dtype = torch.float64,
        cache: bool = False,
        transform=None,
    ):
        from deqh_core.data.md17 import open_source

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
        if layout is None:
            layout = AOLayout(basis, _elements(reader))
        elif layout.basis.lower() != basis.lower():
            raise DataError(f"{self.path}: layout is for {layout.basis!r}, data for {basis!r}")
        self.layout = layout
        self.dtype = dtype
        self.transform = transform
        self._basis = basis
        self._cache: dict[int, Data] | None = {} if cache else None
        self._reader, self._pid = reader, os.getpid()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def reader(self):
        # SQLite connections must not cross a fork (DataLoader workers): reopen per process.
        if self._pid != os.getpid():
            from deqh_core.data.md17 import open_source

            self._reader, self._pid = open_source(self.path, basis=self._basis), os.getpid()
        return self._reader

    def __getitem__(self, index: int) -> Data:
        mol_id = self.ids[index]
        if self._cache is not None and mol_id in self._cache:
            return self._cache[mol_id]
        data = molecule_data(self.reader.get(mol_id), self.layout, self.dtype, f"{self.path}: ")
        if self.transform is not None:
            data = self.transform(data)
        if self._cache is not None:
            self._cache[mol_id] = data
        return data

    def records(self):
        """The raw records (full matrices, PySCF order) of this dataset, in order."""
        return (self.reader.get(i) for i in self.ids)


def _elements(reader) -> list[int]:
    elements = getattr(reader, "elements", None)
    if callable(elements):
        return list(elements())
    return sorted({int(z) for r in reader for z in r.atomic_numbers})
