"""End-to-end check of a Hamiltonian dataset: label symmetry, the pipeline from file to batched
blocks and back, orbital energies, and the labels' self-consistency under their own recipe
(PySCF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch_geometric.loader import DataLoader

from deqh_core.ao.blocks import assemble, unflatten
from deqh_core.ao.orbitals import ElectronCountError, density, occupied_count, solve
from deqh_core.data.dataset import HamiltonianDataset, asymmetry
from deqh_core.data.recipe import Recipe, labels_recipe
from deqh_core.data.splits import random_split
from deqh_core.util.errors import DataError


@dataclass
class DatasetReport:
    path: str
    n_molecules: int
    recipe: dict
    irreps: str
    atom_counts: dict[int, int]
    split_sizes: tuple[int, int, int]
    roundtrip_exact: bool
    homo: list[float] = field(default_factory=list)  # Hartree, per molecule
    gap: list[float] = field(default_factory=list)
    # max |F[D(H)] - H| (Hartree) for the sampled molecules: 0 for an exact SCF solution
    self_consistency: dict[int, float] = field(default_factory=dict)
    # largest |M - M.T| (Hartree for H) over all labels, and the records beyond tolerance
    max_asymmetry: float = 0.0
    asymmetric: dict[int, str] = field(default_factory=dict)
    recipe_note: str | None = None  # what was assumed when the file records no recipe

    @property
    def ok(self) -> bool:
        return self.roundtrip_exact and not self.asymmetric


def check_dataset(
    path: str | Path, batch_size: int = 16, scf_sample: int = 3, seed: int = 0
) -> DatasetReport:
    """Check every label for symmetry; load every symmetric molecule, batch it, assemble the
    blocks back and compare with the file (exactly); orbital energies of every label; for
    ``scf_sample`` molecules rebuild the Fock matrix from the label's own density with the
    file's recipe and report the largest change. One molecule at a time: memory stays flat."""
    probe = HamiltonianDataset(path)
    asymmetric: dict[int, str] = {}
    worst = 0.0
    for record in probe.reader:
        for what, matrix in (("Hamiltonian", record.hamiltonian), ("overlap", record.overlap)):
            if matrix is None:
                continue
            value, problem = asymmetry(matrix)
            worst = max(worst, value)
            if problem:
                asymmetric[record.id] = f"{what}: {problem}"
    ok_ids = [i for i in probe.ids if i not in asymmetric]
    data = HamiltonianDataset(path, ids=ok_ids, layout=probe.layout)
    recipe, note = labels_recipe(data.recipe, data.layout.basis)
    exact = True
    homo, gap = [], []
    for batch in DataLoader(data, batch_size=batch_size):
        h = unflatten(assemble(batch.h_diag, batch.h_off, batch), batch.n_ao)
        s = unflatten(assemble(batch.s_diag, batch.s_off, batch), batch.n_ao)
        for mol_id, h_mol, s_mol in zip(batch.mol_id.tolist(), h, s):
            record = data.reader.get(mol_id)
            exact &= bool(np.array_equal(h_mol.numpy(), record.hamiltonian))
            eps, _ = solve(h_mol.numpy(), s_mol.numpy())
            try:
                n_occ = occupied_count(record.atomic_numbers, recipe.basis, recipe.charge, len(eps))
            except ElectronCountError as err:
                raise DataError(f"{path}: molecule id {mol_id}: {err}") from None
            homo.append(float(eps[n_occ - 1]))
            gap.append(float(eps[n_occ] - eps[n_occ - 1]) if n_occ < len(eps) else float("nan"))
    n_atoms = np.array([len(info.atomic_numbers) for info in probe.reader.infos()])
    counts = dict(zip(*(a.tolist() for a in np.unique(n_atoms, return_counts=True))))
    split = random_split(probe.ids, (0.8, 0.1, 0.1), seed=seed)
    report = DatasetReport(
        path=str(path),
        n_molecules=len(probe),
        recipe=data.recipe,
        irreps=str(data.layout.irreps),
        atom_counts=counts,
        split_sizes=(len(split.train), len(split.val), len(split.test)),
        roundtrip_exact=exact,
        homo=homo,
        gap=gap,
        max_asymmetry=worst,
        asymmetric=asymmetric,
        recipe_note=note,
    )
    if scf_sample and data.recipe.get("xc") and ok_ids:
        rng = np.random.default_rng(seed)
        for mol_id in rng.choice(ok_ids, size=min(scf_sample, len(ok_ids)), replace=False):
            record = data.reader.get(int(mol_id))
            report.self_consistency[int(mol_id)] = fock_residual(record, recipe)
    return report


def fock_residual(record, recipe: Recipe) -> float:
    """max |F[D(H)] - H| in Hartree: the Fock matrix of the density that the label ``H``
    itself implies (closed shell, aufbau), minus ``H``."""
    mol = recipe.mole(record.atomic_numbers, record.positions)
    mf = recipe.rks(mol)
    fock = mf.get_fock(dm=density(record.hamiltonian, mf.get_ovlp(), mol.nelectron))
    return float(np.abs(fock - record.hamiltonian).max())
