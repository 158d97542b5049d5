"""Losses and metrics on block-form Hamiltonians (paper eq. 45, A.8)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from deqh_core.blocks import block_gather
from deqh_core.solver import Blocks


def block_errors(pred: Blocks, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors ``pred - label`` on the valid entries only: ``(diag [k_d], off [k_o])``."""
    g = block_gather(batch)
    return (pred.diag - batch.h_diag)[g.diag_mask], (pred.off - batch.h_off)[g.off_mask]


def hamiltonian_loss(pred: Blocks, batch) -> torch.Tensor:
    """Eq. 45: RMSE + MAE over every valid entry of the batch's blocks (Hartree)."""
    diag, off = block_errors(pred, batch)
    err = torch.cat([diag, off])
    return err.pow(2).mean().sqrt() + err.abs().mean()


@dataclass
class MAEAccumulator:
    """Mean absolute errors over diagonal blocks, off-diagonal blocks and all valid entries
    (Hartree), accumulated over batches; entries, not molecules, are averaged (as QH9 does)."""

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
