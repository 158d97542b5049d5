"""QHNet's norm gate: the equivariant nonlinearity of its node and pair layers."""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import normalize2mom
from torch import nn
from torch.nn import functional as F

from deqh_backbones.qhnet.channels import Channels


class NormGate(nn.Module):
    """Scalars and the norms of all other channels go through an MLP; its output replaces the
    scalars and multiplies (gates) every other channel. Equivariant: the MLP sees invariants only.

    ``forward(x [N, irreps.dim]) -> [N, irreps.dim]`` (same irreps; scalars ``0e`` first).

    Args:
        irreps: feature irreps.
        hidden: hidden width of the MLP (default: the number of channels, as in QHNet).
    """

    def __init__(self, irreps: o3.Irreps, hidden: int | None = None):
        super().__init__()
        self.channels = Channels(irreps)
        n = self.channels.num_channels
        hidden = hidden or n
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.channels.n_scalars
        scalars, vectors = torch.split(x, [s, x.shape[1] - s], dim=1)
        # the epsilon keeps the norm differentiable at zero
        norms = torch.sqrt(self.channels.vector_squares(x) + 1e-12)
        out = self.mlp(torch.cat([scalars, norms], dim=1))
        gates = out[:, s:].index_select(1, self.channels.vector_channel)
        return torch.cat([out[:, :s], vectors * gates], dim=1)


class ScalarGate(nn.Module):
    """e3nn's ``Gate`` with SiLU on the scalars and sigmoid gates (both second-moment
    normalised, as e3nn does), in a few operations.

    Input irreps: ``scalars + gates + gated`` with ``n_gates = gated.num_irreps`` scalar gates
    (``gates`` is ``n_gates x 0e``); output: ``silu(scalars) + gated * sigmoid(gates)``.

    Args:
        irreps_scalars: the scalars (``0e``).
        irreps_gated: the non-scalar irreps to gate.
    """

    def __init__(self, irreps_scalars: o3.Irreps, irreps_gated: o3.Irreps):
        super().__init__()
        self.irreps_scalars, self.irreps_gated = o3.Irreps(irreps_scalars), o3.Irreps(irreps_gated)
        n_gates = self.irreps_gated.num_irreps
        self.irreps_in = self.irreps_scalars + o3.Irreps(f"{n_gates}x0e") + self.irreps_gated
        self.irreps_out = self.irreps_scalars + self.irreps_gated
        self.sizes = [self.irreps_scalars.dim, n_gates, self.irreps_gated.dim]
        dims = torch.tensor([ir.dim for mul, ir in self.irreps_gated for _ in range(mul)])
        self.register_buffer("gate_of", torch.repeat_interleave(torch.arange(n_gates), dims))
        self.silu, self.sigmoid = normalize2mom(F.silu), normalize2mom(torch.sigmoid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars, gates, gated = torch.split(x, self.sizes, dim=1)
        gates = self.sigmoid(gates).index_select(1, self.gate_of)
        return torch.cat([self.silu(scalars), gated * gates], dim=1)
