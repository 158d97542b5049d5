"""Evaluation metrics (paper A.8, QH9 definitions) against PySCF and a plain numpy/scipy
computation written here."""

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from deqh_core.ao.blocks import assemble, flatten, split, unflatten
from deqh_core.ao.orbitals import electron_count, occupied_count
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.recipe import Recipe
from deqh_core.solvers.deq import DEQDiagnostics
from deqh_core.solvers.protocol import Blocks
from deqh_core.training.metrics import (
    MAEAccumulator,
    MetricsAccumulator,
    batch_metrics,
    orbital_errors,
)
from deqh_core.util.errors import DeqhError

IDS = [0, 1, 100, 101, 150]  # water and ethanol geometries of the bundled set


@pytest.fixture(scope="module")
def molecules():
    data = HamiltonianDataset(ids=IDS)
    batch = next(iter(DataLoader(data, batch_size=len(IDS))))
    records = list(data.records())
    mols = [Recipe().mole(r.atomic_numbers, r.positions) for r in records]
    return batch, records, mols


def _perturbed(batch, records, scale=2e-3, seed=0):
    """Full symmetric perturbations per molecule (numpy) and the blocks of ``H + P``."""
    rng = np.random.default_rng(seed)
    h_pred = []
    for r in records:
        p = rng.normal(scale=scale, size=r.hamiltonian.shape)
        h_pred.append(r.hamiltonian + (p + p.T) / 2)
    flat = flatten([torch.from_numpy(h) for h in h_pred])
    return h_pred, Blocks(*split(flat, batch))


def _reference(h_pred, h_true, s, n_occ, mol):
    """QH9's recipe in numpy: Löwdin-orthogonalise, diagonalise, back-transform; H errors
    split by whether the two AOs sit on the same atom."""

    def solve(h):
        w, v = np.linalg.eigh(s)
        x = v / np.sqrt(w)
        eps, c = np.linalg.eigh(x.T @ h @ x)
        return eps, x @ c

    eps_p, c_p = solve(h_pred)
    eps_t, c_t = solve(h_true)
    cos = [
        abs(c_p[:, i] @ c_t[:, i]) / np.linalg.norm(c_p[:, i]) / np.linalg.norm(c_t[:, i])
        for i in range(n_occ)
    ]
    atom = np.concatenate([[a] * (e - b) for a, (_, _, b, e) in enumerate(mol.aoslice_by_atom())])
    same = atom[:, None] == atom[None, :]
    err = np.abs(h_pred - h_true)
    return {
        "h_mae_all": err.mean(),
        "h_mae_diag": err[same].mean(),
        "h_mae_off": err[~same].mean(),
        "eps_occ_mae": np.abs(eps_p[:n_occ] - eps_t[:n_occ]).mean(),
        "homo_error": abs(eps_p[n_occ - 1] - eps_t[n_occ - 1]),
        "lumo_error": abs(eps_p[n_occ] - eps_t[n_occ]),
        "gap_error": abs((eps_p[n_occ] - eps_p[n_occ - 1]) - (eps_t[n_occ] - eps_t[n_occ - 1])),
        "psi_cos": np.mean(cos),
    }


def test_true_hamiltonian_scores_perfectly_and_matches_pyscf(molecules):
    batch, records, mols = molecules
    rows = batch_metrics(Blocks(batch.h_diag, batch.h_off), batch, "def2-svp")
    for row, record, mol in zip(rows, records, mols):
        assert row.mol_id == record.id and row.n_occ == mol.nelectron // 2
        assert row.h_mae_all == row.h_mae_diag == row.h_mae_off == 0.0
        assert row.eps_occ_mae < 1e-12 and row.homo_error < 1e-12 and row.lumo_error < 1e-12
        assert row.psi_cos == pytest.approx(1.0, abs=1e-10)
    # the metrics solve with PySCF's overlap: the one the blocks carry is int1e_ovlp
    s_blocks = Blocks(batch.s_diag, batch.s_off)
    assert [r.n_ao for r in rows] == [mol.nao for mol in mols]
    for s, mol in zip(unflatten(assemble(*s_blocks, batch), batch.n_ao), mols):
        np.testing.assert_allclose(s.numpy(), mol.intor("int1e_ovlp"), atol=1e-12)


def test_perturbed_hamiltonian_matches_an_independent_computation(molecules):
    batch, records, mols = molecules
    h_pred, pred = _perturbed(batch, records)
    rows = batch_metrics(pred, batch, "def2-svp")
    for row, hp, record, mol in zip(rows, h_pred, records, mols):
        ref = _reference(hp, record.hamiltonian, mol.intor("int1e_ovlp"), row.n_occ, mol)
        for key, value in ref.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-8, abs=1e-12), key
        assert 0.1 < row.psi_cos < 1.0 and row.eps_occ_mae > 1e-5


def test_summary_averages_molecules_and_keeps_the_entry_weighted_mae(molecules):
    batch, records, _ = molecules
    _, pred = _perturbed(batch, records, seed=1)
    acc = MetricsAccumulator("def2-svp")
    rows = acc.update(pred, batch)
    summary = acc.summary()
    assert summary["n_molecules"] == len(IDS) == len(rows)
    assert summary["h_mae_all"] == pytest.approx(np.mean([r.h_mae_all for r in rows]))
    assert summary["homo_mae"] == pytest.approx(np.mean([r.homo_error for r in rows]))
    entries = MAEAccumulator()
    entries.update(pred, batch)
    assert summary["h_mae_all_entries"] == pytest.approx(entries.result()["mae_all"])
    # molecules of different sizes: per-molecule and per-entry averages differ
    assert summary["h_mae_all"] != pytest.approx(summary["h_mae_all_entries"], rel=1e-6)
    assert "deq_nfe" not in summary


def test_deq_diagnostics_are_summarised(molecules):
    batch, _, _ = molecules
    n = len(IDS)
    diag = DEQDiagnostics(
        nfe=4,
        nstep=torch.tensor([4, 3, 4, 2, 4]),
        abs_trace=torch.zeros(n, 4),
        rel_trace=torch.zeros(n, 4),
        abs_residual=torch.tensor([1e-4, 2e-4, 3e-4, 4e-4, 5e-2]),
        rel_residual=torch.zeros(n),
        stop_mode="abs",
        tol=1e-3,
        converged=torch.tensor([True, True, True, True, False]),
        diverged=torch.zeros(n, dtype=torch.bool),
        nonfinite=False,
    )
    acc = MetricsAccumulator("def2-svp")
    acc.update(Blocks(batch.h_diag, batch.h_off), batch, diag)
    s = acc.summary()
    assert (s["deq_nfe"], s["deq_nstep"], s["deq_converged"]) == (4.0, 3.4, 0.8)
    assert s["deq_residual_max"] == pytest.approx(5e-2)
    assert s["deq_residual_mean"] == pytest.approx(np.mean([1e-4, 2e-4, 3e-4, 4e-4, 5e-2]))


def test_occupied_orbitals_and_their_errors():
    assert occupied_count([8, 1, 1], "def2-svp") == 5
    assert occupied_count([8, 1, 1, 1], "def2-svp", charge=1) == 5
    with pytest.raises(DeqhError, match="closed shells"):
        occupied_count([8, 1], "def2-svp")
    with pytest.raises(DeqhError, match="25 doubly occupied orbitals, but def2-svp gives only 24"):
        occupied_count([8, 1, 1], "def2-svp", charge=-40, n_ao=24)
    # a permuted, sign-flipped copy of the same orbitals is still similarity 1
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    s = a @ a.T + 6 * np.eye(6)
    h = rng.normal(size=(6, 6))
    h = h + h.T
    errors = orbital_errors(h, h, s, 3)
    assert errors["psi_cos"] == pytest.approx(1.0) and errors["eps_occ_mae"] < 1e-12
    assert np.isnan(orbital_errors(h, h, s, 6)["lumo_error"])


@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvp", "sto-3g"])
def test_electron_counts_are_those_of_pyscf_with_ecps(basis):
    """def2 basis sets put ECPs on Rb and beyond: iodine keeps 25 of its 53 electrons."""
    cases = [([1, 53], 0), ([55, 53], 0), ([8, 1, 1], 0), ([37, 9], 0), ([1, 35], -2)]
    for z, charge in cases:
        if basis == "sto-3g" and max(z) > 54:
            continue
        pos = np.arange(3 * len(z), dtype=float).reshape(-1, 3)
        mol = Recipe(basis=basis, charge=charge).mole(z, pos)
        assert electron_count(z, basis, charge) == mol.nelectron, (z, basis)
    assert electron_count([1, 53], "def2-tzvp") == 26 and electron_count([1, 53], "sto-3g") == 54
