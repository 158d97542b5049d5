"""Equivariant layer normalisation of node features."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from deqh_backbones.qhnet.channels import Channels


class EquivariantLayerNorm(nn.Module):
    """Per node: the scalars are centred over their channels, then the whole feature vector is
    divided by the root mean square of its components (one invariant divisor per node, so the
    map is equivariant), then scaled per channel (and shifted on the scalars) by learned
    parameters.

    Equiformer normalises every irrep type by its own divisor; one divisor for all of them is
    used here because the inputs of DEQHNet's filter often have irrep types that are zero up to
    rounding (the l > 0 parts of the overlap's on-site features, of the identity's, ...): a
    divisor of their own would blow the rounding noise up to O(1).

    ``forward(x [N, irreps.dim]) -> [N, irreps.dim]`` (scalars ``0e`` first).
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5):
        super().__init__()
        self.channels = Channels(o3.Irreps(irreps))
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.channels.num_channels))
        self.bias = nn.Parameter(torch.zeros(self.channels.n_scalars))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.channels.n_scalars
        scalars = x[:, :s] - x[:, :s].mean(dim=1, keepdim=True)
        x = torch.cat([scalars, x[:, s:]], dim=1)
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        x = x * self.weight.index_select(0, self.channels.channel)
        return torch.cat([x[:, :s] + self.bias, x[:, s:]], dim=1)
