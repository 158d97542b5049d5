"""End-to-end check of a Hamiltonian dataset: the pipeline from file to batched blocks and back,
orbital energies, and the labels' self-consistency under their own recipe (PySCF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
from torch_geometric.loader import DataLoader

from deqh_core.blocks import assemble, unflatten
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.splits import random_split
from deqh_core.recipe import Recipe


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


def orbital_energies(hamiltonian: np.ndarray, overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``H C = S C eps`` in float64: ``eps [n_ao]`` ascending, ``C [n_ao, n_ao]``."""
    return scipy.linalg.eigh(hamiltonian, overlap)


def check_dataset(
    path: str | Path, batch_size: int = 16, scf_sample: int = 3, seed: int = 0
) -> DatasetReport:
    """Load every molecule, batch it, assemble the blocks back and compare with the file
    (exactly); orbital energies of every label; for ``scf_sample`` molecules rebuild the Fock
    matrix from the label's own density with the file's recipe and report the largest change."""
    data = HamiltonianDataset(path)
    exact = True
    homo, gap = [], []
    for batch in DataLoader(data, batch_size=batch_size):
        h = unflatten(assemble(batch.h_diag, batch.h_off, batch), batch.n_ao)
        s = unflatten(assemble(batch.s_diag, batch.s_off, batch), batch.n_ao)
        for mol_id, h_mol, s_mol in zip(batch.mol_id.tolist(), h, s):
            record = data.reader.get(mol_id)  # one molecule at a time: memory stays flat
            exact &= bool(np.array_equal(h_mol.numpy(), record.hamiltonian))
            eps, _ = orbital_energies(h_mol.numpy(), s_mol.numpy())
            n_occ = int(record.atomic_numbers.sum()) // 2
            homo.append(float(eps[n_occ - 1]))
            gap.append(float(eps[n_occ] - eps[n_occ - 1]))
    n_atoms = np.array([len(info.atomic_numbers) for info in data.reader.infos()])
    counts = dict(zip(*(a.tolist() for a in np.unique(n_atoms, return_counts=True))))
    split = random_split(data.ids, (0.8, 0.1, 0.1), seed=seed)
    report = DatasetReport(
        path=str(path),
        n_molecules=len(data),
        recipe=data.recipe,
        irreps=str(data.layout.irreps),
        atom_counts=counts,
        split_sizes=(len(split.train), len(split.val), len(split.test)),
        roundtrip_exact=exact,
        homo=homo,
        gap=gap,
    )
    if scf_sample and data.recipe.get("xc"):
        recipe = Recipe.from_meta(data.recipe)
        rng = np.random.default_rng(seed)
        for mol_id in rng.choice(data.ids, size=min(scf_sample, len(data)), replace=False):
            record = data.reader.get(int(mol_id))
            report.self_consistency[int(mol_id)] = fock_residual(record, recipe)
    return report


def fock_residual(record, recipe: Recipe) -> float:
    """max |F[D(H)] - H| in Hartree: the Fock matrix of the density that the label ``H``
    itself implies (closed shell, aufbau), minus ``H``."""
    mol = recipe.mole(record.atomic_numbers, record.positions)
    mf = recipe.rks(mol)
    _, c = orbital_energies(record.hamiltonian, mf.get_ovlp())
    occ = c[:, : mol.nelectron // 2]
    fock = mf.get_fock(dm=2.0 * occ @ occ.T)
    return float(np.abs(fock - record.hamiltonian).max())
