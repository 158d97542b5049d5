"""Losses and metrics on block-form Hamiltonians (paper eq. 45, A.8).

Training uses :func:`hamiltonian_loss` and :class:`MAEAccumulator` (entry-averaged H MAE).
Evaluation uses :class:`MetricsAccumulator`: the QH9 metrics the paper reports (A.8), per
molecule and averaged over molecules: H MAE on diagonal / off-diagonal blocks / all entries,
MAE of occupied orbital energies, HOMO, LUMO and gap, cosine similarity of occupied orbital
coefficients, and for DEQ models the iterations used and the final residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deqh_core.ao.blocks import assemble, block_gather, unflatten
from deqh_core.ao.orbitals import ElectronCountError, occupied_count, solve
from deqh_core.solvers.deq import DEQDiagnostics
from deqh_core.solvers.protocol import Blocks
from deqh_core.util.errors import DeqhError


def block_errors(pred: Blocks, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors ``pred - label`` on the valid entries only: ``(diag [k_d], off [k_o])``."""
    g = block_gather(batch)
    return (pred.diag - batch.h_diag)[g.diag_mask], (pred.off - batch.h_off)[g.off_mask]


def hamiltonian_loss(pred: Blocks, batch) -> torch.Tensor:
    """Eq. 45: RMSE + MAE over every valid entry of the batch's blocks (Hartree)."""
    diag, off = block_errors(pred, batch)
    err = torch.cat([diag, off])
    return err.pow(2).mean().sqrt() + err.abs().mean()


def fixed_point_penalty(residual: Blocks, batch) -> torch.Tensor:
    """RMSE + MAE of a DEQ's ``f(H*) - H*`` over the valid block entries (Hartree)."""
    g = block_gather(batch)
    err = torch.cat([residual.diag[g.diag_mask], residual.off[g.off_mask]])
    return err.pow(2).mean().sqrt() + err.abs().mean()


def training_loss(
    pred: Blocks, diagnostics: DEQDiagnostics | None, batch, residual_weight: float = 0.0
) -> torch.Tensor:
    """Eq. 45, plus ``residual_weight`` x :func:`fixed_point_penalty` for a DEQ in training."""
    loss = hamiltonian_loss(pred, batch)
    if residual_weight and diagnostics is not None and diagnostics.residual is not None:
        loss = loss + residual_weight * fixed_point_penalty(diagnostics.residual, batch)
    return loss


@dataclass
class MAEAccumulator:
    """Mean absolute errors over diagonal blocks, off-diagonal blocks and all valid entries
    (Hartree), accumulated over batches; entries, not molecules, are averaged (QH9's test
    script averages per molecule: see :class:`MetricsAccumulator`)."""

    sums: dict[str, float] = field(default_factory=lambda: {"diag": 0.0, "off": 0.0})
    counts: dict[str, int] = field(default_factory=lambda: {"diag": 0, "off": 0})

    def update(self, pred: Blocks, batch) -> None:
        diag, off = block_errors(pred, batch)
        for key, err in (("diag", diag), ("off", off)):
            self.sums[key] += float(err.abs().double().sum())
            self.counts[key] += err.numel()

    def result(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {
            "mae_diag": self.sums["diag"] / max(self.counts["diag"], 1),
            "mae_off": self.sums["off"] / max(self.counts["off"], 1),
            "mae_all": sum(self.sums.values()) / max(total, 1),
        }


# ----------------------------------------------------------------------------------------------
# evaluation metrics (paper A.8, QH9's definitions)


def orbital_errors(
    h_pred: np.ndarray, h_true: np.ndarray, overlap: np.ndarray, n_occ: int
) -> dict[str, float]:
    """Orbital metrics of one molecule from full ``[n_ao, n_ao]`` matrices (any one AO order,
    Hartree), solved in float64 as ``H C = S C eps`` with the real overlap ``S``.

    Returns (energies in Hartree):

    * ``eps_occ_mae``: mean over the ``n_occ`` occupied orbitals of ``|eps_pred - eps_true|``;
    * ``homo_error``, ``lumo_error``, ``gap_error``: absolute errors of HOMO (orbital
      ``n_occ - 1``), LUMO (orbital ``n_occ``, NaN if there is none) and their gap;
    * ``psi_cos``: mean over occupied orbitals ``i`` of ``|c_pred_i . c_true_i| /
      (|c_pred_i| |c_true_i|)``, the plain Euclidean cosine of the AO coefficient vectors
      (columns of ``C``, S-normalised by the solver), as QH9's ``torch.cosine_similarity`` over
      the AO axis; the absolute value removes the arbitrary sign of an eigenvector. Orbitals
      are paired by energy rank, so a degenerate or reordered pair lowers the similarity.
    """
    eps_p, c_p = solve(h_pred, overlap)  # symmetrised: eigh reads one triangle
    eps_t, c_t = solve(h_true, overlap)
    occ = slice(0, n_occ)
    dot = np.abs(np.einsum("ai,ai->i", c_p[:, occ], c_t[:, occ]))
    cos = dot / (np.linalg.norm(c_p[:, occ], axis=0) * np.linalg.norm(c_t[:, occ], axis=0))
    has_lumo = n_occ < len(eps_t)
    lumo_p = eps_p[n_occ] if has_lumo else np.nan
    lumo_t = eps_t[n_occ] if has_lumo else np.nan
    homo_p, homo_t = eps_p[n_occ - 1], eps_t[n_occ - 1]
    return {
        "eps_occ_mae": float(np.abs(eps_p[occ] - eps_t[occ]).mean()),
        "homo_error": float(abs(homo_p - homo_t)),
        "lumo_error": float(abs(lumo_p - lumo_t)),
        "gap_error": float(abs((lumo_p - homo_p) - (lumo_t - homo_t))),
        "psi_cos": float(cos.mean()),
    }


def molecule_block_mae(pred: Blocks, batch) -> dict[str, torch.Tensor]:
    """Per-molecule H MAE over its diagonal blocks, off-diagonal blocks and all its entries
    (Hartree, float64, each ``[n_molecules]``); valid entries only. A molecule without
    off-diagonal blocks (one atom) gets NaN there."""
    g = block_gather(batch)
    atom_mol = getattr(batch, "batch", None)
    if atom_mol is None:
        atom_mol = torch.zeros(g.diag.shape[0], dtype=torch.long, device=g.diag.device)
    n_mol = len(g.n_ao)
    sums, counts = {}, {}
    parts = (
        ("diag", pred.diag - batch.h_diag, g.diag_mask, atom_mol),
        ("off", pred.off - batch.h_off, g.off_mask, atom_mol[batch.pair_index[0]]),
    )
    for key, err, mask, mol in parts:
        err = torch.where(mask, err.double().abs(), 0.0).sum((1, 2))
        sums[key] = err.new_zeros(n_mol).index_add_(0, mol, err)
        counts[key] = err.new_zeros(n_mol).index_add_(0, mol, mask.sum((1, 2)).double())
    nan = torch.tensor(torch.nan, dtype=torch.float64, device=g.diag.device)
    return {
        "diag": sums["diag"] / counts["diag"],
        "off": torch.where(counts["off"] > 0, sums["off"] / counts["off"].clamp(min=1), nan),
        "all": (sums["diag"] + sums["off"]) / (counts["diag"] + counts["off"]),
    }


@dataclass
class MoleculeMetrics:
    """All metrics of one molecule; energies and H errors in Hartree."""

    mol_id: int
    n_atoms: int
    n_ao: int
    n_occ: int
    h_mae_all: float
    h_mae_diag: float
    h_mae_off: float
    eps_occ_mae: float
    homo_error: float
    lumo_error: float
    gap_error: float
    psi_cos: float
    deq_nfe: int | None = None  # forward evaluations of the batch the molecule was in
    deq_nstep: int | None = None  # evaluation that produced the returned estimate
    deq_residual: float | None = None  # ||f(H*) - H*||_F, Hartree
    deq_converged: bool | None = None


def batch_metrics(
    pred: Blocks,
    batch,
    basis: str,
    diagnostics: DEQDiagnostics | None = None,
    charge: int = 0,
) -> list[MoleculeMetrics]:
    """:class:`MoleculeMetrics` of every molecule of a batch.

    H errors are computed on the blocks (vectorised over the batch); orbital metrics from the
    full matrices in PySCF order (``assemble`` + ``unflatten`` of predicted, label and overlap
    blocks), one float64 generalized eigenproblem per molecule. ``basis`` and ``charge`` set
    the number of occupied orbitals (closed shell; ECP cores excluded, as PySCF counts them).
    """
    block_mae = {k: v.cpu().tolist() for k, v in molecule_block_mae(pred, batch).items()}

    def full(diag, off) -> list[np.ndarray]:
        flat = assemble(diag.detach().double(), off.detach().double(), batch)
        return [m.cpu().numpy() for m in unflatten(flat, batch.n_ao)]

    h_pred = full(pred.diag, pred.off)
    h_true = full(batch.h_diag, batch.h_off)
    overlap = full(batch.s_diag, batch.s_off)
    ptr = getattr(batch, "ptr", None)
    ptr = ptr.tolist() if ptr is not None else [0, batch.num_nodes]
    z = batch.z.cpu().numpy()
    ids = batch.mol_id.reshape(-1).tolist()
    rows = []
    for b, mol_id in enumerate(ids):
        z_mol = z[ptr[b] : ptr[b + 1]]
        try:
            n_occ = occupied_count(z_mol, basis, charge, len(h_true[b]))
        except ElectronCountError as err:
            raise ElectronCountError(f"molecule id {mol_id}: {err}") from None
        row = MoleculeMetrics(
            mol_id=int(mol_id),
            n_atoms=len(z_mol),
            n_ao=len(h_true[b]),
            n_occ=n_occ,
            h_mae_all=block_mae["all"][b],
            h_mae_diag=block_mae["diag"][b],
            h_mae_off=block_mae["off"][b],
            **orbital_errors(h_pred[b], h_true[b], overlap[b], n_occ),
        )
        if diagnostics is not None:
            row.deq_nfe = diagnostics.nfe
            row.deq_nstep = int(diagnostics.nstep[b])
            row.deq_residual = float(diagnostics.abs_residual[b])
            row.deq_converged = bool(diagnostics.converged[b])
        rows.append(row)
    return rows


SUMMARY_UNITS = {
    "h_mae_all": "Hartree",
    "h_mae_diag": "Hartree",
    "h_mae_off": "Hartree",
    "h_mae_all_entries": "Hartree",
    "h_mae_diag_entries": "Hartree",
    "h_mae_off_entries": "Hartree",
    "eps_occ_mae": "Hartree",
    "homo_mae": "Hartree",
    "lumo_mae": "Hartree",
    "gap_mae": "Hartree",
    "psi_cos": "fraction (1 = identical)",
    "deq_nfe": "backbone evaluations per batch",
    "deq_nstep": "evaluation of the returned estimate",
    "deq_residual_mean": "Hartree (Frobenius norm of f(H*) - H*)",
    "deq_residual_max": "Hartree",
    "deq_converged": "fraction of molecules",
}
"""Unit of every key of :meth:`MetricsAccumulator.summary`."""


@dataclass
class MetricsAccumulator:
    """The paper's evaluation metrics (A.8) accumulated over batches.

    Following QH9's test script, every metric is computed per molecule and then averaged over
    molecules: ``h_mae_*`` (per-molecule MAE over its diagonal-block, off-diagonal-block or all
    entries), ``eps_occ_mae`` (per-molecule mean over occupied orbitals), ``homo_mae``,
    ``lumo_mae``, ``gap_mae`` and ``psi_cos``. ``h_mae_*_entries`` average over all entries of
    the set instead (what :class:`MAEAccumulator` and the training log report); the two agree
    when all molecules have the same size. For a DEQ model ``deq_*`` summarise the forward
    solve: mean evaluations per batch, mean ``nstep``, mean and max final residual and the
    fraction of molecules converged to the tolerance.
    """

    basis: str  # of the labels: sets the electron count (ECPs)
    charge: int = 0
    molecules: list[MoleculeMetrics] = field(default_factory=list)
    entries: MAEAccumulator = field(default_factory=MAEAccumulator)

    def update(
        self, pred: Blocks, batch, diagnostics: DEQDiagnostics | None = None
    ) -> list[MoleculeMetrics]:
        rows = batch_metrics(pred, batch, self.basis, diagnostics, self.charge)
        self.entries.update(pred, batch)
        self.molecules.extend(rows)
        return rows

    def summary(self) -> dict[str, float]:
        """Averages over the molecules seen (units in :data:`SUMMARY_UNITS`)."""
        if not self.molecules:
            raise DeqhError("no molecules were evaluated")

        def mean(key: str) -> float:
            values = np.array([getattr(m, key) for m in self.molecules], dtype=np.float64)
            values = values[~np.isnan(values)]
            return float(values.mean()) if len(values) else float("nan")

        out: dict[str, float] = {"n_molecules": len(self.molecules)}
        for key in ("h_mae_all", "h_mae_diag", "h_mae_off"):
            out[key] = mean(key)
        entries = self.entries.result()
        for key in ("all", "diag", "off"):
            out[f"h_mae_{key}_entries"] = entries[f"mae_{key}"]
        out["eps_occ_mae"] = mean("eps_occ_mae")
        for key in ("homo", "lumo", "gap"):
            out[f"{key}_mae"] = mean(f"{key}_error")
        out["psi_cos"] = mean("psi_cos")
        deq = [m for m in self.molecules if m.deq_nstep is not None]
        if deq:
            residual = np.array([m.deq_residual for m in deq])
            out |= {
                "deq_nfe": float(np.mean([m.deq_nfe for m in deq])),
                "deq_nstep": float(np.mean([m.deq_nstep for m in deq])),
                "deq_residual_mean": float(residual.mean()),
                "deq_residual_max": float(residual.max()),
                "deq_converged": float(np.mean([m.deq_converged for m in deq])),
            }
        return out
